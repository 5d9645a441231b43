import CulvertTransport
import Testing

struct ProxyConfigurationTests {
    /// A full proxy URL gives host, port and percent-decoded credentials; once the proxy asks for Basic, they are
    /// sent as Basic authorization.
    @Test func parsesHostPortAndPercentEncodedCredentials() throws {
        let proxy = try ProxyConfiguration(url: "http://al%40ice:p%3Ass@proxy.example:3128/")
        #expect(proxy.host == "proxy.example")
        #expect(proxy.port == 3128)
        #expect(proxy.username == "al@ice")
        #expect(proxy.password == "p:ss")
        let authenticator = try #require(proxy.authenticator)
        #expect(authenticator.needsChallenge)
        #expect(authenticator.authorization(method: "GET", uri: "http://server/") == nil, "nothing before the proxy asks")
        #expect(authenticator.challenged([ProxyChallenge(scheme: "Basic", parameters: ["realm": "p"])], sent: nil))
        // base64("al@ice:p:ss")
        #expect(authenticator.authorization(method: "GET", uri: "http://server/") == "Basic YWxAaWNlOnA6c3M=")
        #expect(proxy.description == "http://proxy.example:3128")
    }

    /// Without a scheme or port, the URL is taken as an http proxy on curl's default port 1080.
    @Test func bareHostUsesCurlsDefaultPort() throws {
        let proxy = try ProxyConfiguration(url: "proxy.example")
        #expect(proxy.port == 1080)
        #expect(proxy.authenticator == nil)
    }

    /// IPv6 literals in brackets parse, and show bracketed again.
    @Test func parsesIPv6Literal() throws {
        let proxy = try ProxyConfiguration(url: "http://[::1]:8080")
        #expect(proxy.host == "::1")
        #expect(proxy.port == 8080)
        #expect(proxy.description == "http://[::1]:8080")
    }

    /// Unsupported schemes, bad ports and bad escapes are refused with the reason.
    @Test(arguments: [
        ("socks5://h:1080", "scheme"),
        ("http://h:99999", "port"),
        ("http://h:x", "port"),
        ("http://a%zz@h:1", "percent"),
        ("http://:8080", "no host"),
    ])
    func refusesBadURLs(url: String, reasonPart: String) {
        #expect {
            try ProxyConfiguration(url: url)
        } throws: { error in
            guard case .invalidProxyURL(_, let reason) = error as? TransportError else { return false }
            return reason.contains(reasonPart)
        }
    }
}
