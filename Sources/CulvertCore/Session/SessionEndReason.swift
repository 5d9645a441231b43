/// Why a session's state machine ended: the protocol-level causes, which the driver reports to its owners (as
/// `SessionError` in the Culvert library, which adds the ones that happen before a session exists).
public enum SessionEndReason: Error, Hashable, Sendable {
    case handshake(HandshakeError)
    case handshakeTimedOut(seconds: Double)
    case transportClosed(String)
    case protocolViolation(GoAwayCode, String)
    case peerWentAway(GoAwayCode, String)
    case keepaliveTimeout(seconds: Double)
    /// Server: the transport was lost and no client resumed the session within the grace period.
    case detachedExpired(seconds: Double)
    /// Server: a resumption HELLO arrived on this connection and the session it names took the connection over.
    case handedOver
    /// Server: the session was refused before its handshake.
    case refused(GoAwayCode, String)
    /// Server: a detached session ended to make room for a new session of its user, at its session limit.
    case replaced(user: String)
    case shutdown
}
