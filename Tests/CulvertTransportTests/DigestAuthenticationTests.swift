import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@testable import CulvertTransport

/// Proxy authentication's pure parts: challenges read as proxies write them, Digest answers checked against the
/// RFCs' own examples, the choice of scheme and when a 407 is worth answering again, and netrc files.
struct DigestAuthenticationTests {
    /// RFC 7616 §3.9.1's example challenge, as a proxy would send it (SHA-256 first, MD5 second).
    let rfcChallenges = [
        #"Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#,
        #"Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=MD5, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#,
    ]
    let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"

    @Test func challengesAreReadWithTheirQuotedParametersAndSeveralToAHeader() {
        let challenges = ProxyChallenge.parse([#"Basic realm="a, \"quoted\" realm", Digest realm="r", nonce="n", qop="auth""#, "NTLM", "Negotiate YII=="])
        #expect(challenges.map(\.scheme) == ["basic", "digest", "ntlm", "negotiate"])
        #expect(challenges[0].parameters["realm"] == #"a, "quoted" realm"#)
        #expect(challenges[1].parameters == ["realm": "r", "nonce": "n", "qop": "auth"])
        #expect(challenges[3].token == "YII==")
    }

    @Test func digestAnswersMatchTheRFC7616ExampleForSHA256AndMD5() throws {
        let challenges = ProxyChallenge.parse(self.rfcChallenges)
        let sha256 = try #require(DigestAuthentication(challenges[0]))
        let md5 = try #require(DigestAuthentication(challenges[1]))
        #expect(sha256.algorithm == .sha256 && md5.algorithm == .md5)
        func response(_ digest: DigestAuthentication) -> String {
            digest.response(username: "Mufasa", password: "Circle of Life", method: "GET", uri: "/dir/index.html", nonceCount: 1, clientNonce: self.cnonce)
        }
        #expect(response(sha256) == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1")
        #expect(response(md5) == "8ca523f5e9506fed4657c9700eebdbec")
        let header = sha256.authorization(
            username: "Mufasa", password: "Circle of Life", method: "GET", uri: "/dir/index.html", nonceCount: 1, clientNonce: self.cnonce
        )
        #expect(header.hasPrefix(#"Digest username="Mufasa", realm="http-auth@example.org", nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", uri="/dir/index.html", algorithm=SHA-256, response="753927fa"#))
        #expect(header.contains("qop=auth, nc=00000001, cnonce=\"\(self.cnonce)\""))
        #expect(header.hasSuffix(#"opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#))
        #expect(!header.contains("Circle of Life"))
    }

    /// RFC 2617 §3.5's example (MD5, qop auth), and a challenge without qop answered the RFC 2069 way.
    @Test func digestAnswersMatchTheRFC2617ExampleAndOmitQopWhenNoneIsOffered() throws {
        let digest = try #require(DigestAuthentication(ProxyChallenge(scheme: "Digest", parameters: [
            "realm": "testrealm@host.com", "qop": "auth,auth-int", "nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        ])))
        #expect(digest.response(username: "Mufasa", password: "Circle Of Life", method: "GET", uri: "/dir/index.html", nonceCount: 1, clientNonce: "0a4f113b")
            == "6629fae49393a05397450978507c4ef1")
        let old = try #require(DigestAuthentication(ProxyChallenge(scheme: "Digest", parameters: ["realm": "r", "nonce": "n"])))
        let header = old.authorization(username: "u", password: "p", method: "CONNECT", uri: "h:1", nonceCount: 1, clientNonce: "c")
        #expect(!header.contains("qop") && !header.contains("nc=") && !header.contains("cnonce"))
    }

    @Test func digestChallengesThisSideCannotAnswerAreLeftAlone() {
        #expect(DigestAuthentication(ProxyChallenge(scheme: "Digest", parameters: ["realm": "r", "nonce": "n", "qop": "auth-int"])) == nil)
        #expect(DigestAuthentication(ProxyChallenge(scheme: "Digest", parameters: ["realm": "r", "nonce": "n", "algorithm": "SHA-512-256"])) == nil)
        #expect(DigestAuthentication(ProxyChallenge(scheme: "Digest", parameters: ["realm": "r"])) == nil)
    }

    /// The strongest offer wins; each request counts the nonce up; a stale nonce (or a first challenge) is worth
    /// another try, the same credentials refused again are not.
    @Test func theAuthenticatorPicksTheStrongestSchemeCountsNoncesAndRetriesOnlyWhereItCanHelp() throws {
        let authenticator = ProxyAuthenticator(username: "Mufasa", password: "Circle of Life")
        let offers = ProxyChallenge.parse([#"Basic realm="r""#] + self.rfcChallenges.reversed())
        #expect(authenticator.challenged(offers, sent: nil))
        #expect(authenticator.schemeName == "Digest")
        let first = try #require(authenticator.authorization(method: "GET", uri: "http://s/a"))
        let second = try #require(authenticator.authorization(method: "GET", uri: "http://s/a"))
        #expect(first.contains("algorithm=SHA-256,") && first.contains("nc=00000001"))
        #expect(second.contains("nc=00000002"))
        // Refused with the same nonce and no stale: the credentials are wrong.
        #expect(!authenticator.challenged(offers, sent: second))
        var stale = ProxyChallenge.parse([self.rfcChallenges[0]])
        stale[0].parameters["stale"] = "true"
        stale[0].parameters["nonce"] = "fresh"
        #expect(authenticator.challenged(stale, sent: second))
        let third = try #require(authenticator.authorization(method: "GET", uri: "http://s/a"))
        #expect(third.contains(#"nonce="fresh""#) && third.contains("nc=00000001"))
        // Basic sent to a proxy that turns out to want Digest: worth answering.
        let basic = ProxyAuthenticator(username: "u", password: "p")
        #expect(basic.challenged([ProxyChallenge(scheme: "Basic")], sent: nil))
        let sentBasic = try #require(basic.authorization(method: "GET", uri: "x"))
        #expect(!basic.challenged([ProxyChallenge(scheme: "Basic")], sent: sentBasic))
        #expect(basic.challenged(offers, sent: sentBasic))
        // Nothing this side speaks: no retry.
        #expect(!ProxyAuthenticator(username: "u", password: "p").challenged([ProxyChallenge(scheme: "Negotiate")], sent: nil))
    }

    private func pair(_ netrc: NetrcFile, _ host: String) -> String? {
        netrc.credentials(for: host).map { "\($0.login):\($0.password)" }
    }

    @Test func netrcEntriesAreFoundByMachineElseDefault() {
        let netrc = NetrcFile(text: """
            # a comment
            machine other.example login bob password b
            machine Proxy.Example
              login alice
              password "s3cret with space"
            macdef init
            cd /pub
            machine inside.macro login mallory password m

            default login anonymous password guest
            """)
        #expect(self.pair(netrc, "proxy.example") == "alice:s3cret with space")
        #expect(self.pair(netrc, "other.example") == "bob:b")
        #expect(self.pair(netrc, "elsewhere") == "anonymous:guest")
        #expect(self.pair(netrc, "inside.macro") == "anonymous:guest", "a macro's body is not entries")
        #expect(NetrcFile(text: "machine a login x").credentials(for: "b") == nil)
    }
}

/// The handler on a proxy connection: a stale nonce's 407 to a request without a body is answered by sending it
/// again with the new nonce, unseen above; one with a body fails the connection with the error that makes the
/// transport send it again on a new one; a refusal of the credentials goes up as it came.
struct ProxyAuthenticationHandlerTests {
    func challenge(nonce: String, stale: Bool) -> HTTPResponseHead {
        var headers: HTTPHeaders = ["Proxy-Authenticate": #"Digest realm="r", nonce="\#(nonce)", qop="auth""# + (stale ? ", stale=true" : "")]
        headers.add(name: "Content-Length", value: "0")
        return HTTPResponseHead(version: .http1_1, status: .proxyAuthenticationRequired, headers: headers)
    }

    func authorization(_ part: HTTPClientRequestPart?) -> String? {
        guard case .head(let head)? = part else { return nil }
        return head.headers.first(name: "Proxy-Authorization")
    }

    func channel() -> (EmbeddedChannel, ProxyAuthenticator) {
        let authenticator = ProxyAuthenticator(username: "alice", password: "s3cret")
        authenticator.challenged(ProxyChallenge.parse([#"Digest realm="r", nonce="first", qop="auth""#]), sent: nil)
        return (EmbeddedChannel(handler: ProxyAuthenticationHandler(authenticator: authenticator)), authenticator)
    }

    @Test func aStaleNonceIsAnsweredOnTheSameConnectionAndAWrongPasswordGoesUp() throws {
        let (channel, _) = self.channel()
        defer { _ = try? channel.finish() }
        try channel.writeOutbound(HTTPClientRequestPart.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: "http://server:1/culvert/down?n=1")))
        try channel.writeOutbound(HTTPClientRequestPart.end(nil))
        #expect(self.authorization(try channel.readOutbound(as: HTTPClientRequestPart.self))?.contains(#"nonce="first""#) == true)
        _ = try channel.readOutbound(as: HTTPClientRequestPart.self)

        try channel.writeInbound(HTTPClientResponsePart.head(self.challenge(nonce: "second", stale: true)))
        try channel.writeInbound(HTTPClientResponsePart.end(nil))
        #expect(try channel.readInbound(as: HTTPClientResponsePart.self) == nil, "the 407 is not seen above")
        let again = self.authorization(try channel.readOutbound(as: HTTPClientRequestPart.self))
        #expect(again?.contains(#"nonce="second""#) == true && again?.contains("nc=00000001") == true)
        guard case .end? = try channel.readOutbound(as: HTTPClientRequestPart.self) else { Issue.record("no end sent again"); return }

        // The new nonce refused without stale: the password is wrong; the 407 goes up.
        try channel.writeInbound(HTTPClientResponsePart.head(self.challenge(nonce: "third", stale: false)))
        guard case .head(let refused)? = try channel.readInbound(as: HTTPClientResponsePart.self) else {
            Issue.record("the refusal did not go up"); return
        }
        #expect(refused.status == .proxyAuthenticationRequired)
    }

    @Test func aStaleNonceForARequestWithABodyFailsTheConnectionForAFreshOne() throws {
        let (channel, authenticator) = self.channel()
        defer { _ = try? channel.finish() }
        try channel.writeOutbound(HTTPClientRequestPart.head(HTTPRequestHead(version: .http1_1, method: .POST, uri: "http://server:1/culvert/up?n=1")))
        try channel.writeOutbound(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(string: "records"))))
        try channel.writeOutbound(HTTPClientRequestPart.end(nil))
        try channel.writeInbound(HTTPClientResponsePart.head(self.challenge(nonce: "second", stale: true)))
        #expect(throws: ProxyAuthenticationHandler.NewCredentialsNeedANewConnection.self) {
            try channel.writeInbound(HTTPClientResponsePart.end(nil))
        }
        #expect(authenticator.authorization(method: "POST", uri: "u")?.contains(#"nonce="second""#) == true)
    }
}
