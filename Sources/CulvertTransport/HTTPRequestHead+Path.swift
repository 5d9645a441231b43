import NIOHTTP1

extension HTTPRequestHead {
    /// The request target without its query string, which is what endpoints are routed by.
    var pathWithoutQuery: String {
        guard let query = self.uri.firstIndex(of: "?") else { return self.uri }
        return String(self.uri[..<query])
    }
}
