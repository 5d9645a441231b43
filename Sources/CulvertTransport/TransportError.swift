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
    /// The server URL could not be used.
    case invalidURL(String, reason: String)
    /// The proxy URL (from `--proxy` or the environment) could not be used.
    case invalidProxyURL(String, reason: String)
    /// TCP connect to the forward proxy failed.
    case proxyUnreachable(proxy: String, reason: String)
    /// The forward proxy answered 407: it wants credentials (`scheme` is what its `Proxy-Authenticate` named).
    case proxyAuthenticationRequired(proxy: String, scheme: String?, credentialsSent: Bool)
    /// The forward proxy refused the method or port (403, 405).
    case proxyRefused(proxy: String, status: Int, reason: String, method: String)
    /// The forward proxy could not reach the server (502, 504).
    case proxyCannotReachServer(proxy: String, status: Int, reason: String)
    /// The forward proxy answered some other non-success status.
    case proxyStatus(proxy: String, status: Int, reason: String)
    /// The forward proxy broke off or answered something that is not HTTP.
    case proxyFailed(proxy: String, reason: String)
    /// A CONNECT tunnel opened but nothing came back through it.
    case proxyRelaysNothing(proxy: String, seconds: Double)
    /// The server no longer knows the HTTP transport connection (it expired or the server restarted).
    case connectionExpired(TransportKind)
    /// A TLS option or file is not usable.
    case invalidTLSSetting(String)
    /// The TLS handshake with the server failed (its certificate was not trusted, or it does not speak TLS).
    case tlsFailed(endpoint: String, reason: String)
    /// Something in the path refused the chunked or polling transport's bodies in every shape it had to try (a
    /// proxy's content rules: by content type, size or inspection); `refusals` says what was refused how.
    case contentRefused(TransportKind, refusals: String)

    /// Whether trying again cannot help, only a change of settings: the proxy refuses the credentials or the port,
    /// TLS is refused, the server has no such path, a URL or TLS setting is unusable, or the proxy relays nothing
    /// through CONNECT. A server that is down, a timeout or a cut connection is worth waiting for.
    public var retryCannotFix: Bool {
        switch self {
        case .invalidURL, .invalidProxyURL, .invalidTLSSetting, .tlsFailed, .proxyAuthenticationRequired, .proxyRefused,
            .proxyRelaysNothing, .contentRefused:
            true
        case .unexpectedStatus(_, let status, _, _):
            status == 404
        case .unreachable, .handshakeFailed, .timedOut, .protocolViolation, .proxyUnreachable, .proxyCannotReachServer,
            .proxyStatus, .proxyFailed, .connectionExpired:
            false
        }
    }

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
        case .invalidURL(let url, let reason):
            "invalid server URL '\(url)': \(reason)"
        case .invalidProxyURL(let url, let reason):
            "invalid proxy URL '\(url)': \(reason); expected http://[USER:PASS@]HOST:PORT"
        case .proxyUnreachable(let proxy, let reason):
            "cannot connect to the proxy \(proxy): \(reason); check --proxy (or HTTP_PROXY/HTTPS_PROXY), or pass --no-proxy"
        case .proxyAuthenticationRequired(let proxy, let scheme, let credentialsSent):
            "the proxy \(proxy) needs authentication (407, scheme \(scheme ?? "not named")); "
                + (credentialsSent
                    ? "it refused the user and password that were sent (check --proxy-user, CULVERT_PROXY_USER, the proxy URL or --netrc)"
                    : "give its user and password: --proxy-user USER:PASS, CULVERT_PROXY_USER, USER:PASS@ in the proxy URL, or --netrc")
                + (scheme.map { ["basic", "digest", "ntlm"].contains($0.lowercased()) } == false ? " (culvert speaks Basic, Digest and NTLM)" : "")
        case .proxyRefused(let proxy, let status, let reason, let method):
            "the proxy \(proxy) refuses \(method) to this server or port (\(status) \(reason)); try another --transport or ask for the port to be allowed"
        case .proxyCannotReachServer(let proxy, let status, let reason):
            "the proxy \(proxy) could not reach the culvert server (\(status) \(reason)); check the server URL and that the server is running"
        case .proxyStatus(let proxy, let status, let reason):
            "the proxy \(proxy) answered \(status) \(reason)"
        case .proxyFailed(let proxy, let reason):
            "the proxy \(proxy) \(reason)"
        case .proxyRelaysNothing(let proxy, let seconds):
            "the proxy \(proxy) accepted CONNECT but relayed no answer within \(seconds) s (it may pass only TLS or HTTP); try another --transport"
        case .connectionExpired(let kind):
            "\(kind): the server no longer knows this connection (it expired or the server restarted)"
        case .invalidTLSSetting(let reason):
            reason
        case .tlsFailed(let endpoint, let reason):
            "TLS with \(endpoint) failed: \(reason)"
        case .contentRefused(let kind, let refusals):
            "\(kind): the path's content rules refused its bodies (\(refusals)); try another --transport, or ask for the server's URL to be allowed"
        }
    }
}
