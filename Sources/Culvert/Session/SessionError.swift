import CulvertCore
import CulvertTransport

/// Why a session ended or could not start. Each description is one line for the user.
public enum SessionError: Error, Sendable, CustomStringConvertible {
    case handshake(HandshakeError)
    case handshakeTimedOut(seconds: Double)
    case transport(TransportError)
    case transportClosed(String)
    case protocolViolation(GoAwayCode, String)
    case peerWentAway(GoAwayCode, String)
    case keepaliveTimeout(seconds: Double)
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
        case .shutdown: "shut down"
        }
    }

    /// Whether the token was wrong (on either side of the check).
    public var isAuthenticationFailure: Bool {
        switch self {
        case .handshake(.clientProofInvalid), .handshake(.serverProofInvalid),
            .handshake(.refusedByPeer(.authenticationFailed, _)):
            true
        default:
            false
        }
    }
}
