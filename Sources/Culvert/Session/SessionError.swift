public import CulvertCore
public import CulvertTransport
public import NIOCore

/// Why a session ended or could not start. Each description is one line for the user.
public enum SessionError: Error, Sendable, CustomStringConvertible {
    case handshake(HandshakeError)
    case handshakeTimedOut(seconds: Double)
    case transport(TransportError)
    case transportClosed(String)
    case protocolViolation(GoAwayCode, String)
    case peerWentAway(GoAwayCode, String)
    case keepaliveTimeout(seconds: Double)
    /// Server: the transport was lost and no client resumed the session within the grace period.
    case detachedExpired(seconds: Double)
    /// Server: a resumption HELLO arrived on this connection and the session it names took the connection over.
    case handedOver
    /// Server: the session was refused before its handshake (too many sessions, too many failed authentications).
    case refused(GoAwayCode, String)
    /// Server: the session waited for its client to resume it, and ended to make room for a new session of its
    /// user, which is at its session limit.
    case replaced(user: String)
    case shutdown

    public var description: String {
        switch self {
        case .handshake(let error): "session handshake failed: \(error)"
        case .handshakeTimedOut(let seconds):
            "no session handshake within \(seconds) s; the peer is not a culvert endpoint or is not responding"
        case .transport(let error): "\(error)"
        case .transportClosed(let reason): "the tunnel connection closed: \(reason)"
        case .protocolViolation(let code, let message): "protocol error (\(code)): \(message)"
        case .peerWentAway(let code, let message):
            message.isEmpty ? "the peer ended the session: \(code)" : "the peer ended the session: \(code): \(message)"
        case .keepaliveTimeout(let seconds): "the peer stopped answering keepalive pings (silent for \(seconds) s)"
        case .detachedExpired(let seconds): "the tunnel connection was lost and not resumed within \(seconds) s"
        case .handedOver: "the connection resumed an earlier session"
        case .replaced(let user):
            "ended while waiting for its client: user \(user) is at its session limit and started a new session"
        case .refused(let code, let message): "refused (\(code)): \(message)"
        case .shutdown: "shut down"
        }
    }

    /// The description with what to do about it, for the one line a command prints when it exits: a refused token
    /// says to check the token on both sides (a missing one already says what to pass).
    public var userMessage: String {
        switch self {
        case .handshake(.noTokenGiven): "\(self)"
        case .handshake(.refusedByPeer(.authenticationFailed, let message)) where message.hasPrefix("unknown user"):
            "\(self) (check --user and --token against the server's users file)"
        case _ where self.isAuthenticationFailure: "\(self) (check --token on both sides)"
        default: "\(self)"
        }
    }

    /// Whether the transport was closed on purpose, to move the session to another one (not a lost connection).
    public var isPlannedTransportMove: Bool {
        if case .transportClosed(let reason) = self, reason == Self.plannedTransportMoveReason { return true }
        return false
    }

    /// The reason a session's transport closes when the client moves it to another transport.
    static let plannedTransportMoveReason = "moved to another transport"

    /// Whether the server refused to resume the session (it expired, or the server restarted).
    public var isResumeRefusal: Bool {
        switch self {
        case .handshake(.refusedByPeer(.resumeRefused, _)), .handshake(.resumeRefused): true
        default: false
        }
    }

    /// Whether the token was wrong (on either side of the check).
    public var isAuthenticationFailure: Bool {
        switch self {
        case .handshake(.clientProofInvalid), .handshake(.serverProofInvalid), .handshake(.resumeProofInvalid),
            .handshake(.userProofInvalid), .handshake(.noTokenGiven), .handshake(.refusedByPeer(.authenticationFailed, _)):
            true
        default:
            false
        }
    }

    /// Whether end-to-end protection is on at one side and off at the other: found here, or said by the peer.
    public var isProtectionMismatch: Bool {
        switch self {
        case .handshake(.sealingMismatch), .handshake(.refusedByPeer(.protectionMismatch, _)): true
        default: false
        }
    }

    /// Whether trying again cannot help: the token is wrong or missing, the peer speaks another protocol version, or
    /// the transport failed in a way that only a change of settings fixes (see ``TransportError/retryCannotFix``).
    /// A client exits on these at once instead of waiting for the server.
    public var retryCannotFix: Bool {
        if self.isAuthenticationFailure || self.isProtectionMismatch { return true }
        switch self {
        case .handshake(.unsupportedVersion), .handshake(.refusedByPeer(.unsupportedVersion, _)): return true
        case .transport(let error): return error.retryCannotFix
        default: return false
        }
    }

    /// For a refusal "for now": the wait the server's message names ("try again in N s"), so that a throttled client
    /// does not knock every second while the server has said it will not listen for a minute.
    public var suggestedRetryDelay: TimeAmount? {
        guard self.isRetryableRefusal, case .handshake(.refusedByPeer(_, let message)) = self,
            let range = message.firstRange(of: "try again in ")
        else { return nil }
        let digits = message[range.upperBound...].prefix { $0.isNumber }
        return Int64(digits).map { .seconds($0) }
    }

    /// Whether the server turned the session away for now (it throttles the address, or is at a limit) and the
    /// client should wait and try again: the token was not judged.
    public var isRetryableRefusal: Bool {
        switch self {
        case .handshake(.refusedByPeer(.throttled, _)), .handshake(.refusedByPeer(.overloaded, _)): true
        default: false
        }
    }
}

extension SessionError {
    /// The error a session's state machine reports when it ends.
    init(_ reason: SessionEndReason) {
        switch reason {
        case .handshake(let error): self = .handshake(error)
        case .handshakeTimedOut(let seconds): self = .handshakeTimedOut(seconds: seconds)
        case .transportClosed(let reason): self = .transportClosed(reason)
        case .protocolViolation(let code, let message): self = .protocolViolation(code, message)
        case .peerWentAway(let code, let message): self = .peerWentAway(code, message)
        case .keepaliveTimeout(let seconds): self = .keepaliveTimeout(seconds: seconds)
        case .detachedExpired(let seconds): self = .detachedExpired(seconds: seconds)
        case .handedOver: self = .handedOver
        case .refused(let code, let message): self = .refused(code, message)
        case .replaced(let user): self = .replaced(user: user)
        case .shutdown: self = .shutdown
        }
    }

    /// This error as the state machine records it.
    var endReason: SessionEndReason {
        switch self {
        case .handshake(let error): .handshake(error)
        case .handshakeTimedOut(let seconds): .handshakeTimedOut(seconds: seconds)
        case .transport(let error): .transportClosed("\(error)")
        case .transportClosed(let reason): .transportClosed(reason)
        case .protocolViolation(let code, let message): .protocolViolation(code, message)
        case .peerWentAway(let code, let message): .peerWentAway(code, message)
        case .keepaliveTimeout(let seconds): .keepaliveTimeout(seconds: seconds)
        case .detachedExpired(let seconds): .detachedExpired(seconds: seconds)
        case .handedOver: .handedOver
        case .refused(let code, let message): .refused(code, message)
        case .replaced(let user): .replaced(user: user)
        case .shutdown: .shutdown
        }
    }
}
