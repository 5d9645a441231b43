import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@testable import CulvertTransport

/// NTLMv2 against the published values: MD4 against RFC 1320's suite, NTOWFv2, NTProofStr, LMv2 and the session
/// base key against MS-NLMP §4.2.4, the messages' layout, and the handshake a proxy connection runs before its
/// first request.
struct NTLMAuthenticationTests {
    static func hex(_ bytes: [UInt8]) -> String { bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }
    static func bytes(_ hex: String) -> [UInt8] {
        var result: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            result.append(UInt8(hex[index..<next], radix: 16)!)
            index = next
        }
        return result
    }

    /// MS-NLMP §4.2.4's CHALLENGE, as `fixtures/ntlm_proxy.py` sends it: server challenge 0123456789abcdef, target
    /// info NetBIOS domain "Domain" and computer "Server".
    static let specChallenge = bytes(
        "4e544c4d53535000020000000c000c0030000000058288200123456789abcdef0000000000000000240024003c00000044006f006d00610069006e0002000c0044006f006d00610069006e0001000c0053006500720076006500720000000000"
    )

    @Test func md4MatchesTheRFC1320TestSuite() {
        let suite = [
            ("", "31d6cfe0d16ae931b73c59d7e0c089c0"), ("a", "bde52cb31de33e46245e05fbdbd6fb24"),
            ("abc", "a448017aaf21d8525fc10ae87aa6729d"), ("message digest", "d9130a8164549fe818874806e1c7014b"),
            ("abcdefghijklmnopqrstuvwxyz", "d79e1c308aa5bbcdeea8ed63df412da9"),
            ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", "043f8582f241db351ce627e153e7f0e4"),
            (String(repeating: "1234567890", count: 8), "e33b4ddc9c38f2199c3e7b164fcc0536"),
        ]
        for (text, digest) in suite { #expect(Self.hex(MD4.hash(Array(text.utf8))) == digest, "MD4(\(text))") }
    }

    @Test func ntlmv2MatchesTheMSNLMPTestVectors() throws {
        let challenge = try #require(NTLMAuthentication.Challenge(Self.specChallenge))
        #expect(Self.hex(challenge.serverChallenge) == "0123456789abcdef")
        #expect(challenge.timestamp == nil)
        let key = NTLMAuthentication.responseKey(user: "User", domain: "Domain", password: "Password")
        #expect(Self.hex(key) == "0c868a403bfd7a93a3001ef22ef02e3f")
        let (nt, lm, sessionBaseKey) = NTLMAuthentication.responses(
            responseKey: key, challenge: challenge, clientChallenge: [UInt8](repeating: 0xaa, count: 8), timestamp: [UInt8](repeating: 0, count: 8)
        )
        #expect(Self.hex(Array(nt.prefix(16))) == "68cd0ab851e51c96aabc927bebef6a1c")
        #expect(Self.hex(lm) == "86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa")
        #expect(Self.hex(sessionBaseKey) == "8de40ccadbc14a82f15cb0ad0de95ca3")
    }

    /// squid's ntlm_fake_auth sends a 49-byte CHALLENGE without the target-info flag and with garbage where the
    /// target info's fields would be: read as curl reads it, with no target info.
    @Test func aChallengeWithoutTheTargetInfoFlagIsReadWithoutTargetInfo() throws {
        let squids = try #require(NTLMAuthentication.Challenge(fromBase64: "TlRMTVNTUAACAAAACQAJAK6qqqoGgggAV/dSuHafE58AAAAAAAA6AFdPUktHUk9VUA=="))
        #expect(Self.hex(squids.serverChallenge) == "57f752b8769f139f")
        #expect(squids.targetInfo.isEmpty)
        #expect(NTLMAuthentication.Challenge(fromBase64: "bm90IG50bG0=") == nil)
    }

    /// The AUTHENTICATE names the domain and user of `DOMAIN\USER` in UTF-16LE at the offsets its header gives,
    /// and carries the NTLMv2 response; the NEGOTIATE is the fixed 32 bytes.
    @Test func messagesAreLaidOutAsMSNLMPSays() throws {
        #expect(NTLMAuthentication.negotiateMessage().count == 32)
        let challenge = try #require(NTLMAuthentication.Challenge(Self.specChallenge))
        let message = NTLMAuthentication.authenticateMessage(
            challenge: challenge, username: "Domain\\User", password: "Password", clientChallenge: [UInt8](repeating: 0xaa, count: 8),
            timestamp: [UInt8](repeating: 0, count: 8)
        )
        func field(_ offset: Int) -> [UInt8] {
            let length = Int(message[offset]) | Int(message[offset + 1]) << 8
            let start = Int(message[offset + 4]) | Int(message[offset + 5]) << 8
            return Array(message[start..<(start + length)])
        }
        #expect(Array(message[0..<8]) == Array("NTLMSSP".utf8) + [0] && message[8] == 3)
        #expect(field(28) == NTLMAuthentication.utf16("Domain"))
        #expect(field(36) == NTLMAuthentication.utf16("User"))
        #expect(Self.hex(Array(field(20).prefix(16))) == "68cd0ab851e51c96aabc927bebef6a1c")
        #expect(NTLMAuthentication.Challenge(Array(message)) == nil, "an AUTHENTICATE is not a CHALLENGE")
    }

    /// The proxy offers NTLM beside Basic and weak Digest: NTLM is used; beside Digest SHA-256, Digest is.
    @Test func ntlmIsChosenOverBasicAndMD5DigestButNotOverSHA256Digest() {
        let authenticator = ProxyAuthenticator(username: "Domain\\User", password: "Password")
        #expect(authenticator.challenged(ProxyChallenge.parse(["Negotiate", "NTLM", #"Basic realm="r""#, #"Digest realm="r", nonce="n""#]), sent: nil))
        #expect(authenticator.isConnectionBased && authenticator.schemeName == "NTLM")
        #expect(authenticator.authorization(method: "GET", uri: "x") == nil, "NTLM credentials go with the connection's handshake")
        let strong = ProxyAuthenticator(username: "u", password: "p")
        strong.challenged(ProxyChallenge.parse(["NTLM", #"Digest realm="r", nonce="n", algorithm=SHA-256"#]), sent: nil)
        #expect(strong.schemeName == "Digest")
    }

    /// On a proxy connection, the first request waits while NEGOTIATE, CHALLENGE and AUTHENTICATE go on HEAD
    /// requests; then it goes out with no credentials, and so does the next.
    @Test func aConnectionRunsTheHandshakeBeforeItsFirstRequest() throws {
        let authenticator = ProxyAuthenticator(username: "Domain\\User", password: "Password")
        authenticator.challenged([ProxyChallenge(scheme: "NTLM")], sent: nil)
        let channel = EmbeddedChannel(handler: ProxyAuthenticationHandler(authenticator: authenticator))
        defer { _ = try? channel.finish() }
        var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: "http://server:1/culvert/up?n=1")
        head.headers.add(name: "Host", value: "server:1")
        // (Written without waiting for the writes: the held request's writes complete only once it goes out.)
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(string: "records"))), promise: nil)
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)

        func nextHead() throws -> HTTPRequestHead? {
            while let part = try channel.readOutbound(as: HTTPClientRequestPart.self) { if case .head(let head) = part { return head } }
            return nil
        }
        let negotiate = try #require(try nextHead())
        #expect(negotiate.method == .HEAD && negotiate.uri == head.uri)
        #expect(negotiate.headers.first(name: "Proxy-Authorization") == authenticator.ntlmNegotiation())
        #expect(try channel.readOutbound(as: HTTPClientRequestPart.self) == .end(nil))
        #expect(try channel.readOutbound(as: HTTPClientRequestPart.self) == nil, "the request waits")

        let token = Base64.encode(Self.specChallenge)
        try channel.writeInbound(HTTPClientResponsePart.head(
            HTTPResponseHead(version: .http1_1, status: .proxyAuthenticationRequired, headers: ["Proxy-Authenticate": "NTLM \(token)", "Content-Length": "0"])
        ))
        try channel.writeInbound(HTTPClientResponsePart.end(nil))
        let authenticate = try #require(try nextHead())
        #expect(authenticate.method == .HEAD)
        #expect(authenticate.headers.first(name: "Proxy-Authorization")?.hasPrefix("NTLM TlRMTVNTUAADAAAA") == true)

        try channel.writeInbound(HTTPClientResponsePart.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: ["Content-Length": "0"])))
        try channel.writeInbound(HTTPClientResponsePart.end(nil))
        #expect(try channel.readInbound(as: HTTPClientResponsePart.self) == nil, "the handshake's answers are not seen above")
        let request = try #require(try nextHead())
        #expect(request.method == .POST && request.headers.first(name: "Proxy-Authorization") == nil)
        guard case .body(.byteBuffer(let body))? = try channel.readOutbound(as: HTTPClientRequestPart.self) else { Issue.record("no body"); return }
        #expect(String(buffer: body) == "records")
    }
}
