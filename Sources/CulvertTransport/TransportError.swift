/// Why a transport connection could not be made or ended early. Each description is one line saying what happened
/// and what to do.
public enum TransportError: Error, Hashable, Sendable, CustomStringConvertible {
    /// TCP connect to the server (or proxy) failed.
    case unreachable(endpoint: String, reason: String)
    /// The server answered with a status other than the one the transport needs.
    case unexpectedStatus(TransportKind, status: Int, reason: String, hint: String)
    /// The server's answer to the handshake was not valid.
    case handshakeFailed(TransportKind, String)
    /// No answer within the time allowed.
    case timedOut(TransportKind, phase: String, seconds: Double)
    /// The peer broke the transport's protocol.
    case protocolViolation(String)
    /// This build does not implement the transport.
    case notImplemented(TransportKind)
    /// The server URL could not be used.
    case invalidURL(String, reason: String)

    public var description: String {
        switch self {
        case .unreachable(let endpoint, let reason):
            "cannot connect to \(endpoint): \(reason); check that the address is right and culvert server is running"
        case .unexpectedStatus(let kind, let status, let reason, let hint):
            "\(kind) handshake: the server answered \(status) \(reason); \(hint)"
        case .handshakeFailed(let kind, let reason):
            "\(kind) handshake failed: \(reason)"
        case .timedOut(let kind, let phase, let seconds):
            "\(kind): no answer to the \(phase) within \(seconds) s; the server or a proxy in between is not responding"
        case .protocolViolation(let reason):
            "transport protocol violation: \(reason)"
        case .notImplemented(let kind):
            "the \(kind) transport is not available in this build; use --transport websocket"
        case .invalidURL(let url, let reason):
            "invalid server URL '\(url)': \(reason)"
        }
    }
}
