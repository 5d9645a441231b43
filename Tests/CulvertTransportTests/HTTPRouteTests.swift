import CulvertTransport
import NIOHTTP1
import Testing

struct HTTPRouteTests {
    let endpoint = ServerEndpoint(host: "tunnel.example.com", port: 8080, pathPrefix: "/culvert")
    let proxy = ProxyConfiguration(host: "proxy.example", port: 3128, username: "u", password: "p")

    /// Direct requests use origin-form targets; through a proxy, absolute-form (RFC 9112 §3.2.2). Credentials are not
    /// in the base headers: ProxyAuthenticationHandler adds them per request, as the proxy's scheme wants.
    @Test func requestTargetsAndHeadersFollowTheRoute() {
        let direct = HTTPRoute(endpoint: self.endpoint, proxy: nil)
        #expect(direct.requestTarget("down?c=1") == "/culvert/down?c=1")
        #expect(direct.baseHeaders()["Proxy-Authorization"].isEmpty)
        #expect(direct.dialHost == "tunnel.example.com" && direct.dialPort == 8080)
        let proxied = HTTPRoute(endpoint: self.endpoint, proxy: self.proxy)
        #expect(proxied.requestTarget("ws") == "http://tunnel.example.com:8080/culvert/ws")
        #expect(proxied.baseHeaders()["Proxy-Authorization"].isEmpty)
        #expect(proxied.baseHeaders()["Host"] == ["tunnel.example.com:8080"])
        #expect(proxied.baseHeaders()["Cache-Control"] == ["no-store"])
        #expect(proxied.dialHost == "proxy.example" && proxied.dialPort == 3128)
    }

    private func head(_ status: HTTPResponseStatus, _ headers: [(String, String)] = []) -> HTTPResponseHead {
        HTTPResponseHead(version: .http1_1, status: status, headers: HTTPHeaders(headers))
    }

    /// 407 names the scheme the proxy asked for and says whether credentials were sent.
    @Test func proxyAuthenticationRequiredNamesTheScheme() {
        let route = HTTPRoute(endpoint: self.endpoint, proxy: ProxyConfiguration(host: "proxy.example", port: 3128))
        let error = route.proxyError(for: self.head(.proxyAuthenticationRequired, [("Proxy-Authenticate", "Basic realm=\"corp\"")]), method: "CONNECT")
        #expect(error == .proxyAuthenticationRequired(proxy: "http://proxy.example:3128", scheme: "Basic", credentialsSent: false))
        #expect("\(error!)".contains("needs authentication") && "\(error!)".contains("USER:PASS@"))
        let negotiate = route.proxyError(for: self.head(.proxyAuthenticationRequired, [("Proxy-Authenticate", "Negotiate")]), method: "GET")
        #expect("\(negotiate!)".contains("culvert speaks Basic, Digest and NTLM"))
    }

    /// 403/405 mean the proxy refuses the method or port; 502/504 that it cannot reach the server; a 404 is the
    /// server's own answer and not read as the proxy's.
    @Test func proxyStatusesBecomeClearErrors() {
        let route = HTTPRoute(endpoint: self.endpoint, proxy: self.proxy)
        #expect(route.proxyError(for: self.head(.forbidden), method: "CONNECT")
            == .proxyRefused(proxy: "http://proxy.example:3128", status: 403, reason: "Forbidden", method: "CONNECT"))
        #expect(route.proxyError(for: self.head(.methodNotAllowed), method: "CONNECT") != nil)
        #expect(route.proxyError(for: self.head(.badGateway), method: "GET")
            == .proxyCannotReachServer(proxy: "http://proxy.example:3128", status: 502, reason: "Bad Gateway"))
        #expect(route.proxyError(for: self.head(.gatewayTimeout), method: "GET") != nil)
        #expect(route.proxyError(for: self.head(.notFound), method: "GET") == nil)
        #expect(HTTPRoute(endpoint: self.endpoint, proxy: nil).proxyError(for: self.head(.forbidden), method: "GET") == nil)
    }
}
