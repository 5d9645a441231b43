public import NIOCore
public import NIOHTTP1

/// How HTTP requests reach the server: directly, through a forward proxy with absolute-form request targets
/// (RFC 9112 §3.2.2) and `Proxy-Authorization`, or, for an `https` server, inside TLS (through the proxy's CONNECT
/// tunnel when there is a proxy). Also reads a proxy's error answers into clear messages.
public struct HTTPRoute: Sendable {
    public let endpoint: ServerEndpoint
    public let proxy: ProxyConfiguration?
    public let extraHeaders: [(String, String)]
    /// How the server's certificate is checked, for `https`.
    public let tls: ClientTLS
    /// The local address connections are made from (nil: the system picks).
    public var sourceAddress: SocketAddress?
    /// The session's cookies: sent with every request, and kept from every response.
    public var cookies: SessionCookieJar?

    public init(endpoint: ServerEndpoint, proxy: ProxyConfiguration?, extraHeaders: [(String, String)] = [], tls: ClientTLS? = nil) {
        self.endpoint = endpoint
        self.proxy = proxy
        self.extraHeaders = extraHeaders
        self.tls = tls ?? ClientTLS.systemDefault
    }

    /// The route of `options` to `endpoint`.
    public init(endpoint: ServerEndpoint, options: TransportOptions) {
        self.init(endpoint: endpoint, proxy: options.proxy, extraHeaders: options.extraHeaders, tls: options.tls)
        self.sourceAddress = options.sourceAddress
        self.cookies = options.cookies
    }

    /// Whether requests go to the proxy itself (plain HTTP through a forward proxy), rather than to the server
    /// (directly, or inside a CONNECT tunnel for `https`).
    var requestsGoToProxy: Bool { self.proxy != nil && !self.endpoint.usesTLS }

    /// What goes after the HTTP codec of a connection whose requests go to the proxy with credentials: the handler
    /// that authenticates each request (none otherwise).
    func proxyAuthentication() -> [any ChannelHandler] {
        guard self.requestsGoToProxy, let authenticator = self.proxy?.authenticator else { return [] }
        return [ProxyAuthenticationHandler(authenticator: authenticator)]
    }

    /// Where the TCP connection goes: the proxy when there is one.
    public var dialHost: String { self.proxy?.host ?? self.endpoint.host }
    public var dialPort: Int { self.proxy?.port ?? self.endpoint.port }

    /// The request target for `endpointName` (e.g. `ws`, or `down?c=…`): absolute-form to a proxy, else
    /// origin-form.
    public func requestTarget(_ endpointName: String) -> String {
        let path = self.endpoint.path(endpointName)
        guard self.requestsGoToProxy else { return path }
        return "http://\(self.endpoint.hostHeader)\(path)"
    }

    /// The headers every tunnel request carries: `Host`, `Cache-Control: no-store`, `User-Agent`, the user's
    /// extra headers and, through a proxy with credentials, `Proxy-Authorization`.
    public func baseHeaders() -> HTTPHeaders {
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: self.endpoint.hostHeader)
        headers.add(name: "Cache-Control", value: "no-store")
        headers.add(name: "User-Agent", value: "culvert/\(CulvertVersion.string)")
        // (`Proxy-Authorization` is added per request by ProxyAuthenticationHandler: Digest's depends on it.)
        if let cookies = self.cookies { headers.add(name: "Cookie", value: cookies.cookieHeader) }
        for (name, value) in self.extraHeaders {
            if let field = CulvertRequestField(headerName: name) {
                field.add(value, to: &headers)
            } else {
                headers.add(name: name, value: value)
            }
        }
        return headers
    }

    /// The error for a proxy's answer, when a proxy is in the route and the status is one a proxy gives for
    /// its own reasons; nil otherwise (the status then came from the server, or is a success).
    public func proxyError(for head: HTTPResponseHead, method: String) -> TransportError? {
        guard self.requestsGoToProxy, let proxy = self.proxy else { return nil }
        return Self.proxyError(for: head, proxy: proxy, method: method)
    }

    /// The error for a status a forward proxy answered (`method` is what it refused: `CONNECT`, `GET`, …).
    public static func proxyError(for head: HTTPResponseHead, proxy: ProxyConfiguration, method: String) -> TransportError? {
        let status = Int(head.status.code)
        let reason = head.status.reasonPhrase
        switch status {
        case 407, 401:
            // 401 is not what RFC 9110 has a proxy send, but tinyproxy answers wrong credentials with it (and
            // `WWW-Authenticate`); the culvert server itself never answers 401.
            let challenge = head.headers.first(name: "Proxy-Authenticate") ?? head.headers.first(name: "WWW-Authenticate")
            let scheme = challenge.flatMap { $0.split(separator: " ", maxSplits: 1).first.map(String.init) }
            return .proxyAuthenticationRequired(
                proxy: proxy.description, scheme: scheme, credentialsSent: proxy.authenticator?.schemeName != nil
            )
        case 403, 405:
            return .proxyRefused(proxy: proxy.description, status: status, reason: reason, method: method)
        case 502, 504:
            return .proxyCannotReachServer(proxy: proxy.description, status: status, reason: reason)
        default:
            return nil
        }
    }

    /// Turns a TCP connect failure into the right error: the proxy's when dialling one.
    func dialError(_ error: any Error) -> any Error {
        guard let proxy = self.proxy, case TransportError.unreachable(_, let reason)? = error as? TransportError else {
            return error
        }
        return TransportError.proxyUnreachable(proxy: proxy.description, reason: reason)
    }
}
