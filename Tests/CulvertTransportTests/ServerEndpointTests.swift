import CulvertTransport
import Testing

@Suite struct ServerEndpointTests {
    /// Scheme, host, port and path are read from the URL; the path defaults to /culvert.
    @Test func urlsParse() throws {
        let plain = try ServerEndpoint(url: "http://tunnel.example.com:8080")
        #expect(plain == ServerEndpoint(host: "tunnel.example.com", port: 8080))
        #expect(plain.path("ws") == "/culvert/ws")
        let tls = try ServerEndpoint(url: "wss://example.com/edge/tunnel/")
        #expect(tls == ServerEndpoint(host: "example.com", port: 443, usesTLS: true, pathPrefix: "/edge/tunnel"))
        let v6 = try ServerEndpoint(url: "http://[::1]:9000")
        #expect(v6.host == "::1" && v6.port == 9000 && v6.hostHeader == "[::1]:9000")
        #expect(try ServerEndpoint(url: "http://h").hostHeader == "h")
    }

    /// Bad URLs are refused with a reason.
    @Test func badURLsAreRefused() {
        for url in ["tunnel.example.com:8080", "ftp://h", "http://h:0", "http://h:x", "http://", "http://u:p@h"] {
            #expect(throws: TransportError.self, "\(url)") { _ = try ServerEndpoint(url: url) }
        }
    }
}
