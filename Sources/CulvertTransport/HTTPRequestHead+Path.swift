import NIOHTTP1

extension HTTPRequestHead {
    /// The request target's path without its query string, which is what endpoints are routed by. An
    /// absolute-form target (`http://host:port/path`, which a server must accept by RFC 9112 §3.2.2, and which
    /// reaches it from proxies that relay a connection as it is after its first request) counts by its path.
    var pathWithoutQuery: String {
        var target = Substring(self.uri)
        if !target.hasPrefix("/"), let schemeEnd = target.firstRange(of: "://") {
            let afterScheme = target[schemeEnd.upperBound...]
            target = afterScheme.firstIndex(of: "/").map { afterScheme[$0...] } ?? "/"
        }
        guard let query = target.firstIndex(of: "?") else { return String(target) }
        return String(target[..<query])
    }

    /// The body length the request declares in `Content-Length`, if it does.
    var declaredBodyLength: Int? {
        self.headers["Content-Length"].first.flatMap { Int($0) }
    }

    /// Whether a body follows the head: a non-zero `Content-Length`, or `Transfer-Encoding: chunked`.
    var hasBody: Bool {
        (self.declaredBodyLength ?? 0) > 0 || self.headers["Transfer-Encoding"].contains { $0.lowercased().contains("chunked") }
    }
}
