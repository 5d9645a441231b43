/// Where the culvert server listens, parsed from a URL such as `http://tunnel.example.com:8080/culvert`.
public struct ServerEndpoint: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int
    /// Whether the URL asks for TLS (`https`/`wss`).
    public var usesTLS: Bool
    /// The server's path prefix, without a trailing slash (default `/culvert`).
    public var pathPrefix: String

    public static let defaultPathPrefix = "/culvert"

    public init(host: String, port: Int, usesTLS: Bool = false, pathPrefix: String = ServerEndpoint.defaultPathPrefix) {
        self.host = host
        self.port = port
        self.usesTLS = usesTLS
        self.pathPrefix = pathPrefix
    }

    /// Parses `http://`, `https://`, `ws://` or `wss://` URLs; the path, when given, replaces the default prefix.
    public init(url: String) throws(TransportError) {
        let parts = url.split(separator: "://", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.count == 2 else {
            throw .invalidURL(url, reason: "expected a scheme, e.g. http://host:port")
        }
        let scheme = parts[0].lowercased()
        switch scheme {
        case "http", "ws": self.usesTLS = false
        case "https", "wss": self.usesTLS = true
        default: throw .invalidURL(url, reason: "scheme '\(scheme)' is not http, https, ws or wss")
        }
        var rest = parts[1]
        var path = ""
        if let slash = rest.firstIndex(of: "/") {
            path = String(rest[slash...])
            rest = rest[..<slash]
        }
        if let query = path.firstIndex(where: { $0 == "?" || $0 == "#" }) {
            path = String(path[..<query])
        }
        let authority = String(rest)
        guard !authority.contains("@") else {
            throw .invalidURL(url, reason: "user info is not used in the server URL; pass --token")
        }
        let defaultPort = self.usesTLS ? 443 : 80
        do {
            (self.host, self.port) = try Authority.split(authority, defaultPort: defaultPort)
        } catch {
            throw .invalidURL(url, reason: error.reason)
        }
        while path.hasSuffix("/") { path.removeLast() }
        self.pathPrefix = path.isEmpty ? Self.defaultPathPrefix : path
    }

    /// The value of a `Host` header for this server.
    /// `host:port` with the port always there and an IPv6 host in brackets: CONNECT's request target.
    public var authority: String {
        self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)"
    }

    public var hostHeader: String {
        let host = self.host.contains(":") ? "[\(self.host)]" : self.host
        let defaultPort = self.usesTLS ? 443 : 80
        return self.port == defaultPort ? host : "\(host):\(self.port)"
    }

    public var description: String {
        "\(self.usesTLS ? "https" : "http")://\(self.hostHeader)\(self.pathPrefix)"
    }

    /// The request path of a transport endpoint, e.g. `/culvert/ws`.
    public func path(_ endpoint: String) -> String {
        "\(self.pathPrefix)/\(endpoint)"
    }
}
