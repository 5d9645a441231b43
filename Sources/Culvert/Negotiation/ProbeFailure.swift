import CulvertCore
public import CulvertTransport

/// Why a transport's probe failed, as a short stable code (for `culvert probe --json`) and a phrase.
public enum ProbeFailure: String, Sendable, Codable, CaseIterable {
    /// The upgrade reached the server as a plain request (426, 400 or 200 instead of 101): a proxy stripped it.
    case upgradeStripped = "upgrade_stripped"
    /// The upgrade was answered, then no session handshake came back through it.
    case noRelayAfterUpgrade = "no_relay_after_upgrade"
    /// A streaming response was held back (the handshake never came down it).
    case responseBuffered = "response_buffered"
    /// The proxy refused CONNECT to the server's port (403, 405).
    case connectRefused = "connect_refused"
    /// The proxy accepted CONNECT and then relayed nothing.
    case connectNoRelay = "connect_no_relay"
    /// The proxy wants credentials (407).
    case proxyAuthentication = "proxy_auth"
    /// A request body was refused as too large (413).
    case bodyTooLarge = "body_too_large"
    /// The path's content rules refused the chunked or polling bodies in every shape (by content type, size or
    /// inspection: a 403, 415 or 451 from the proxy, or a block page in place of the answer).
    case contentRefused = "content_refused"
    /// The server or the proxy could not be reached.
    case unreachable
    /// The proxy could not reach the server (502, 504).
    case serverUnreachableFromProxy = "proxy_cannot_reach_server"
    /// The token was refused.
    case authentication = "auth_failed"
    /// The server turns this address away for now: earlier attempts from it failed to authenticate.
    case throttled
    /// End-to-end session encryption is on at one side and off at the other (`--no-session-encryption`).
    case protectionMismatch = "protection_mismatch"
    /// No answer within the probe's time.
    case timeout
    /// Some other HTTP status or protocol error.
    case other

    public var phrase: String {
        switch self {
        case .upgradeStripped: "Upgrade stripped on the way"
        case .noRelayAfterUpgrade: "upgrade answered, then nothing relayed"
        case .responseBuffered: "streaming response held back"
        case .connectRefused: "CONNECT refused"
        case .connectNoRelay: "CONNECT accepted, nothing relayed"
        case .proxyAuthentication: "proxy needs authentication"
        case .bodyTooLarge: "request body too large"
        case .contentRefused: "bodies refused by content rules"
        case .unreachable: "unreachable"
        case .serverUnreachableFromProxy: "proxy cannot reach the server"
        case .authentication: "token refused"
        case .throttled: "address throttled after failed attempts"
        case .protectionMismatch: "end-to-end encryption on at one side only"
        case .timeout: "no answer in time"
        case .other: "failed"
        }
    }

    /// The failure mode an error of a probe of `kind` shows; `sessionStarted` tells whether the transport itself
    /// was established before it happened (then a silent session handshake means the path holds data back).
    public static func classify(_ error: any Error, kind: TransportKind, transportEstablished: Bool) -> ProbeFailure {
        if let error = error as? SessionError {
            switch error {
            case .transport(let transportError):
                return Self.classify(transportError, kind: kind, transportEstablished: transportEstablished)
            case .handshakeTimedOut:
                switch kind {
                case .websocket, .connect: return .noRelayAfterUpgrade
                case .chunked: return .responseBuffered
                case .polling: return .timeout
                }
            case _ where error.isAuthenticationFailure:
                return .authentication
            case .handshake(let handshakeError) where handshakeError.isThrottled:
                return .throttled
            case _ where error.isProtectionMismatch:
                return .protectionMismatch
            default:
                return .other
            }
        }
        if let error = error as? TransportError {
            switch error {
            case .unexpectedStatus(_, let status, _, _):
                if [426, 400, 200].contains(status) && (kind == .websocket || kind == .connect) { return .upgradeStripped }
                if status == 413 { return .bodyTooLarge }
                return .other
            case .proxyRefused: return .connectRefused
            case .proxyRelaysNothing: return .connectNoRelay
            case .proxyAuthenticationRequired: return .proxyAuthentication
            case .proxyCannotReachServer: return .serverUnreachableFromProxy
            case .contentRefused: return .contentRefused
            case .unreachable, .proxyUnreachable: return .unreachable
            case .timedOut: return transportEstablished ? .noRelayAfterUpgrade : .timeout
            default: return .other
            }
        }
        return .other
    }
}
