import CulvertTransport
import Testing

struct ProxyEnvironmentTests {
    let plain = ServerEndpoint(host: "tunnel.example.com", port: 8080)
    let secure = ServerEndpoint(host: "tunnel.example.com", port: 443, usesTLS: true)

    /// An http:// server uses http_proxy before HTTP_PROXY, and falls back to ALL_PROXY.
    @Test func plainServerPrefersLowerCaseHTTPProxy() throws {
        let both = ProxyEnvironment(["http_proxy": "http://lower:1", "HTTP_PROXY": "http://upper:2"])
        #expect(try both.proxy(for: self.plain)?.host == "lower")
        let upper = ProxyEnvironment(["HTTP_PROXY": "http://upper:2", "HTTPS_PROXY": "http://secure:3"])
        #expect(try upper.proxy(for: self.plain)?.host == "upper")
        let all = ProxyEnvironment(["ALL_PROXY": "http://all:4"])
        #expect(try all.proxy(for: self.plain)?.host == "all")
    }

    /// An https:// server uses HTTPS_PROXY, not HTTP_PROXY.
    @Test func secureServerUsesHTTPSProxy() throws {
        let environment = ProxyEnvironment(["HTTP_PROXY": "http://plain:1", "https_proxy": "http://secure:3"])
        #expect(try environment.proxy(for: self.secure)?.host == "secure")
        #expect(try ProxyEnvironment(["HTTP_PROXY": "http://plain:1"]).proxy(for: self.secure) == nil)
    }

    /// NO_PROXY exempts exact hosts, domain suffixes with or without a leading dot, and `*`; not other hosts.
    @Test(arguments: [
        ("tunnel.example.com", true),
        ("example.com", true),
        (".example.com", true),
        ("other.com, example.com", true),
        ("*", true),
        ("ample.com", false),
        ("tunnel.example.co", false),
    ])
    func noProxyMatchesHostsAndSuffixes(list: String, bypassed: Bool) throws {
        let environment = ProxyEnvironment(["http_proxy": "http://proxy:3128", "NO_PROXY": list])
        #expect((try environment.proxy(for: self.plain) == nil) == bypassed)
    }

    /// An empty variable counts as unset, and a bad value names the variable.
    @Test func emptyIsUnsetAndBadValueNamesTheVariable() throws {
        #expect(try ProxyEnvironment(["http_proxy": "", "HTTP_PROXY": ""]).proxy(for: self.plain) == nil)
        #expect {
            try ProxyEnvironment(["http_proxy": "ftp://x"]).proxy(for: self.plain)
        } throws: { error in
            "\(error)".contains("http_proxy=ftp://x")
        }
    }
}
