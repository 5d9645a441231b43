import CulvertCore
import NIOConcurrencyHelpers
import NIOCore
import Testing

/// The handshake of a client that names a user of the server's users file: SCRAM-style proofs, an unknown user that
/// looks like a wrong token, the user's session limit, and probes that do not count against it.
@Suite struct NamedUserHandshakeTests {
    /// A server whose users are `accounts` (name → token) and whose admissions are counted in `admitted`.
    struct Server {
        let accounts: [String: TokenVerifier]
        let admitted = NIOLockedValueBox<[String]>([])
        var limit: Int? = nil
        var sharedToken: String? = nil

        func machine() -> HandshakeStateMachine {
            let accounts = self.accounts
            let admitted = self.admitted
            let limit = self.limit
            let lookup = UserLookup(
                verifier: { accounts[$0] },
                admit: { user in
                    admitted.withLockedValue { list in
                        if let limit, list.filter({ $0 == user }).count >= limit { return "user \(user) is at its limit" }
                        list.append(user)
                        return nil
                    }
                }
            )
            return HandshakeStateMachine(
                role: .server(token: self.sharedToken, authenticationRequired: true, users: lookup),
                capabilities: [.compression, .resumption], maximumDataPayload: 16384
            )
        }
    }

    enum Result {
        case established(client: HandshakeStateMachine.Outcome, server: HandshakeStateMachine.Outcome)
        case refused(HandshakeError, Frame?)
        case clientRefused(HandshakeError)
    }

    /// Runs a whole handshake, returning where it ended.
    func handshake(user: String?, token: String, server: Server, capabilities: Capabilities = []) -> (Result, hello: Frame, auth: Frame?) {
        var client = HandshakeStateMachine(role: .client(token: token, user: user), capabilities: capabilities, maximumDataPayload: 32768)
        var serverMachine = server.machine()
        let hello = client.start()
        guard case .send(let challenge) = serverMachine.receive(hello) else { return (.refused(.resumeRefused, nil), hello, nil) }
        guard case .send(let auth) = client.receive(challenge) else { return (.refused(.resumeRefused, nil), hello, nil) }
        switch serverMachine.receive(auth) {
        case .established(let serverOutcome, let welcome?):
            switch client.receive(welcome) {
            case .established(let clientOutcome, _): return (.established(client: clientOutcome, server: serverOutcome), hello, auth)
            case .fail(let error, _): return (.clientRefused(error), hello, auth)
            default: return (.clientRefused(.resumeRefused), hello, auth)
            }
        case .fail(let error, let goAway): return (.refused(error, goAway), hello, auth)
        default: return (.refused(.resumeRefused, nil), hello, auth)
        }
    }

    let aliceToken = "alice-token-0123456789"

    /// A named user with the right token establishes; both sides agree on the session key and know the user; the
    /// HELLO carries the name, and neither HELLO nor AUTH carries the token.
    @Test func aNamedUserWithItsTokenIsAdmittedAndBothSidesKnowTheUser() throws {
        let server = Server(accounts: ["alice": TokenVerifier(token: self.aliceToken)])
        let (result, hello, auth) = self.handshake(user: "alice", token: self.aliceToken, server: server)
        guard case .established(let client, let serverOutcome) = result else { Issue.record("not established: \(result)"); return }
        #expect(client.sessionKey == serverOutcome.sessionKey)
        #expect(client.user == "alice")
        #expect(serverOutcome.user == "alice")
        #expect(server.admitted.withLockedValue { $0 } == ["alice"])
        guard case .hello(let decodedHello) = try Self.decodeOne(FrameEncoder().encode(hello)) else { Issue.record("no hello"); return }
        #expect(decodedHello.user == "alice")
        let authBytes = Array(FrameEncoder().encode(try #require(auth)).readableBytesView)
        #expect(!authBytes.containsSubsequence(Array(self.aliceToken.utf8)))
    }

    /// A users file may hold the token's hash instead of the token: a server with only the hash admits the user.
    @Test func aServerHoldingOnlyTheTokenHashAdmitsTheUser() throws {
        let hashText = TokenVerifier(token: self.aliceToken).hashText
        let parsed = try #require(TokenVerifier(hashText: hashText))
        #expect(!hashText.contains(self.aliceToken))
        let (result, _, _) = self.handshake(user: "alice", token: self.aliceToken, server: Server(accounts: ["alice": parsed]))
        guard case .established = result else { Issue.record("not established with the hash: \(result)"); return }
    }

    /// An unknown user and a known user with a wrong token get the same refusal, byte for byte: the answer does not
    /// tell whether a user exists.
    @Test func anUnknownUserAndAWrongTokenAreRefusedAlike() throws {
        let server = Server(accounts: ["alice": TokenVerifier(token: self.aliceToken)])
        let (wrongToken, _, _) = self.handshake(user: "alice", token: "not-alices", server: server)
        let (unknownUser, _, _) = self.handshake(user: "mallory", token: self.aliceToken, server: server)
        guard case .refused(let firstError, let firstGoAway?) = wrongToken, case .refused(let secondError, let secondGoAway?) = unknownUser else {
            Issue.record("not both refused: \(wrongToken), \(unknownUser)"); return
        }
        #expect(firstError == .userProofInvalid)
        #expect(secondError == firstError)
        #expect(FrameEncoder().encode(firstGoAway) == FrameEncoder().encode(secondGoAway))
        guard case .goAway(.authenticationFailed, _) = firstGoAway else { Issue.record("not authentication failed"); return }
        #expect(server.admitted.withLockedValue { $0 }.isEmpty)
    }

    /// Another user's token does not open a user's sessions (the proof is bound to the name in the transcript too).
    @Test func anotherUsersTokenIsRefused() throws {
        let server = Server(accounts: ["alice": TokenVerifier(token: self.aliceToken), "bob": TokenVerifier(token: "bobs-token")])
        let (result, _, _) = self.handshake(user: "alice", token: "bobs-token", server: server)
        guard case .refused(.userProofInvalid, _) = result else { Issue.record("bob's token opened alice: \(result)"); return }
    }

    /// A user at its session limit is refused with GOAWAY overloaded and the server's reason; a probe is admitted
    /// without taking one of the user's sessions.
    @Test func aUserAtItsLimitIsRefusedButItsProbesAreNotCounted() throws {
        var server = Server(accounts: ["alice": TokenVerifier(token: self.aliceToken)])
        server.limit = 1
        guard case (.established, _, _) = self.handshake(user: "alice", token: self.aliceToken, server: server) else {
            Issue.record("first session refused"); return
        }
        let (probe, _, _) = self.handshake(user: "alice", token: self.aliceToken, server: server, capabilities: [.probe])
        guard case .established(_, let probeOutcome) = probe else { Issue.record("probe refused: \(probe)"); return }
        #expect(probeOutcome.isProbe)
        let (second, _, _) = self.handshake(user: "alice", token: self.aliceToken, server: server)
        guard case .refused(.userRefused(let reason), .goAway(.overloaded, let message)?) = second else {
            Issue.record("second session not refused: \(second)"); return
        }
        #expect(reason == "user alice is at its limit")
        #expect(message == reason)
        #expect(server.admitted.withLockedValue { $0 } == ["alice"])
    }

    /// A server with named users and no shared token refuses a client that names no user, whatever its token
    /// (an empty token must not match an absent one).
    @Test func aServerWithOnlyNamedUsersRefusesAClientThatNamesNone() throws {
        let server = Server(accounts: ["alice": TokenVerifier(token: self.aliceToken)])
        for token in ["", self.aliceToken] {
            let (result, _, _) = self.handshake(user: nil, token: token, server: server)
            guard case .refused(_, .goAway(.authenticationFailed, _)?) = result else { Issue.record("admitted without a user: \(result)"); return }
        }
    }

    /// With a shared token as well, a client that names no user still uses it, as before users existed.
    @Test func aSharedTokenStillWorksBesideNamedUsers() throws {
        var server = Server(accounts: ["alice": TokenVerifier(token: self.aliceToken)])
        server.sharedToken = "shared"
        let (result, _, _) = self.handshake(user: nil, token: "shared", server: server)
        guard case .established(let client, let serverOutcome) = result else { Issue.record("shared token refused: \(result)"); return }
        #expect(client.user == nil && serverOutcome.user == nil)
    }

    /// A client that names a user refuses a server that cannot prove it knows the user's verifier.
    @Test func aClientRefusesAServerThatDoesNotKnowItsUser() throws {
        let server = Server(accounts: ["alice": TokenVerifier(token: "a different token")])
        var client = HandshakeStateMachine(role: .client(token: self.aliceToken, user: "alice"), capabilities: [], maximumDataPayload: 32768)
        var serverMachine = server.machine()
        guard case .send(let challenge) = serverMachine.receive(client.start()) else { Issue.record("no challenge"); return }
        guard case .send = client.receive(challenge) else { Issue.record("no auth"); return }
        let forged = Frame.welcome(Welcome(proof: Array(repeating: 7, count: 32), sessionID: Array(repeating: 1, count: 16), capabilities: [], received: 0))
        guard case .fail(.serverProofInvalid, _) = client.receive(forged) else { Issue.record("client accepted a forged WELCOME"); return }
    }

    /// The hash's text form round-trips, and what is not one is refused.
    @Test func tokenHashTextRoundTripsAndRejectsOtherText() throws {
        let verifier = TokenVerifier(token: "t")
        #expect(TokenVerifier(hashText: verifier.hashText) == verifier)
        #expect(verifier.hashText.hasPrefix("culvert-v1:") && verifier.hashText.count == 11 + 128)
        for bad in ["", "t", "culvert-v1:", "culvert-v2:" + String(repeating: "0", count: 128), "culvert-v1:" + String(repeating: "g", count: 128),
                    "culvert-v1:" + String(repeating: "0", count: 127)] {
            #expect(TokenVerifier(hashText: bad) == nil, "accepted \(bad)")
        }
    }

    /// A HELLO without a user (as before users existed) and one with a user both decode; a user name longer than
    /// 64 bytes or cut short is malformed.
    @Test func helloWithAndWithoutAUserDecodes() throws {
        let plain = Hello(
            version: HandshakeStateMachine.protocolVersion, capabilities: [], nonce: Array(repeating: 1, count: 32),
            keyShare: Array(repeating: 2, count: 32), maximumDataPayload: 32768
        )
        var named = plain
        named.user = "alice@example"
        for hello in [plain, named] {
            #expect(try Self.decodeOne(FrameEncoder().encode(.hello(hello))) == .hello(hello))
        }
        var encoded = FrameEncoder().encode(.hello(named))
        encoded.moveWriterIndex(to: encoded.writerIndex - 1)
        #expect(throws: FrameDecodingError.self) { _ = try Self.decodeOne(Self.refixLength(encoded)) }
    }

    static func decodeOne(_ buffer: ByteBuffer) throws -> Frame? {
        var buffer = buffer
        var decoder = FrameDecoder(maximumPayloadLength: 65536)
        return try decoder.decode(buffer: &buffer)
    }

    /// `buffer` with its frame header's length field set to what it holds.
    static func refixLength(_ buffer: ByteBuffer) -> ByteBuffer {
        var copy = buffer
        let headerLength = FrameEncoder.headerLength
        copy.setInteger(UInt32(buffer.readableBytes - headerLength), at: buffer.readerIndex + headerLength - 4)
        return copy
    }
}
