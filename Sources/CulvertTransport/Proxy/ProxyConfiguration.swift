/// A forward HTTP proxy to reach the server through, parsed from `http://[USER:PASS@]HOST[:PORT]`.
///
/// The port defaults to 1080, as in curl. User and password may be percent-encoded; they answer the proxy's
/// `Proxy-Authenticate` challenge (Basic or Digest, see ``ProxyAuthenticator``) on every request to the proxy.
public struct ProxyConfiguration: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public private(set) var username: String?
    public private(set) var password: String?
    /// The credentials' answers to the proxy's challenges, shared by every copy of this configuration (so by every
    /// connection a client makes through the proxy); nil without credentials.
    public private(set) var authenticator: ProxyAuthenticator?

    public static let defaultPort = 1080

    public init(host: String, port: Int = ProxyConfiguration.defaultPort, username: String? = nil, password: String? = nil) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.authenticator = username.map { ProxyAuthenticator(username: $0, password: password ?? "") }
    }

    /// This proxy with `username` and `password` (from `--proxy-user`, the environment or a netrc file) in place
    /// of any the URL had.
    public func withCredentials(username: String, password: String) -> ProxyConfiguration {
        ProxyConfiguration(host: self.host, port: self.port, username: username, password: password)
    }

    public static func == (lhs: ProxyConfiguration, rhs: ProxyConfiguration) -> Bool {
        lhs.host == rhs.host && lhs.port == rhs.port && lhs.username == rhs.username && lhs.password == rhs.password
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(self.host)
        hasher.combine(self.port)
        hasher.combine(self.username)
        hasher.combine(self.password)
    }

    /// Parses a proxy URL. Only `http://` proxies are supported (a bare `HOST:PORT` is taken as one).
    public init(url: String) throws(TransportError) {
        var rest = Substring(url)
        let schemeParts = url.split(separator: "://", maxSplits: 1, omittingEmptySubsequences: false)
        if schemeParts.count == 2 {
            let scheme = schemeParts[0].lowercased()
            guard scheme == "http" else {
                throw .invalidProxyURL(url, reason: "scheme '\(scheme)' is not supported; use an http:// proxy")
            }
            rest = schemeParts[1]
        }
        if let slash = rest.firstIndex(of: "/") { rest = rest[..<slash] }
        if let at = rest.lastIndex(of: "@") {
            let userInfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            let parts = userInfo.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            guard let user = PercentDecoding.decode(parts[0]),
                parts.count == 1 || PercentDecoding.decode(parts[1]) != nil
            else {
                throw .invalidProxyURL(url, reason: "bad percent-encoding in the user info")
            }
            let password = parts.count == 2 ? PercentDecoding.decode(parts[1]) ?? "" : ""
            self.username = user
            self.password = password
            self.authenticator = ProxyAuthenticator(username: user, password: password)
        } else {
            self.username = nil
            self.password = nil
            self.authenticator = nil
        }
        do {
            (self.host, self.port) = try Authority.split(String(rest), defaultPort: Self.defaultPort)
        } catch {
            throw .invalidProxyURL(url, reason: error.reason)
        }
    }

    /// Whether there are credentials to answer a challenge with.
    public var hasCredentials: Bool { self.username != nil }

    /// The proxy's address for messages, without credentials.
    public var description: String {
        let host = self.host.contains(":") ? "[\(self.host)]" : self.host
        return "http://\(host):\(self.port)"
    }
}

/// RFC 3986 percent-decoding for URL user info.
enum PercentDecoding {
    static func decode(_ text: Substring) -> String? {
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%") {
                guard let high = iterator.next().flatMap(Self.hexValue), let low = iterator.next().flatMap(Self.hexValue)
                else { return nil }
                bytes.append(high << 4 | low)
            } else {
                bytes.append(byte)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
