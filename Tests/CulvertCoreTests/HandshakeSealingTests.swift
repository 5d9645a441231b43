import CulvertCore
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Testing

/// The key exchange of end-to-end protection: both ends derive the same keys, every handshake (a resumption's too)
/// new ones, a hop that swaps a key share or strips the capability fails the handshake, and the whole exchange
/// matches vectors computed by an independent implementation (fixtures/generate_sealing_vectors.py).
@Suite struct HandshakeSealingTests {
    /// Runs a handshake between `client` and `server`; returns both outcomes.
    func handshake(
        _ client: inout HandshakeStateMachine, _ server: inout HandshakeStateMachine
    ) throws -> (client: HandshakeStateMachine.Outcome, server: HandshakeStateMachine.Outcome) {
        let hello = client.start()
        guard case .send(let challenge) = server.receive(hello) else { throw Failure("no CHALLENGE") }
        guard case .send(let auth) = client.receive(challenge) else { throw Failure("no AUTH") }
        guard case .established(let serverOutcome, let welcome?) = server.receive(auth) else { throw Failure("server not established") }
        guard case .established(let clientOutcome, nil) = client.receive(welcome) else { throw Failure("client not established") }
        return (clientOutcome, serverOutcome)
    }

    func newSession(clientCapabilities: Capabilities = .sealed, serverCapabilities: Capabilities = .sealed)
        -> (HandshakeStateMachine, HandshakeStateMachine)
    {
        (
            HandshakeStateMachine(role: .client(token: "t"), capabilities: clientCapabilities, maximumDataPayload: 32768),
            HandshakeStateMachine(role: .server(token: "t", authenticationRequired: true), capabilities: serverCapabilities, maximumDataPayload: 32768)
        )
    }

    @Test func bothEndsDeriveTheSameKeysAndEveryHandshakeNewOnes() throws {
        var (client, server) = self.newSession()
        let first = try self.handshake(&client, &server)
        let keys = try #require(first.client.sealingKeys)
        #expect(first.server.sealingKeys == keys)
        #expect(keys.clientToServer != keys.serverToClient)
        #expect(first.client.capabilities.contains(.sealed))

        var (again, againServer) = self.newSession()
        #expect(try self.handshake(&again, &againServer).client.sealingKeys != keys)
    }

    @Test func aResumptionGetsKeysOfItsOwnFromTheSameSessionKey() throws {
        var (client, server) = self.newSession()
        let original = try self.handshake(&client, &server).client
        var seen: Set<SealingKeys> = [try #require(original.sealingKeys)]
        for _ in 0..<2 {
            var resuming = HandshakeStateMachine(
                role: .resumingClient(sessionID: original.sessionID, sessionKey: original.sessionKey, received: 0),
                capabilities: .sealed, maximumDataPayload: 32768
            )
            var resumed = HandshakeStateMachine(
                role: .resumingServer(sessionID: original.sessionID, sessionKey: original.sessionKey, received: 0),
                capabilities: .sealed, maximumDataPayload: 32768
            )
            let outcomes = try self.handshake(&resuming, &resumed)
            let keys = try #require(outcomes.client.sealingKeys)
            #expect(outcomes.server.sealingKeys == keys)
            #expect(seen.insert(keys).inserted, "a resumption reused keys")
        }
    }

    @Test func protectionOnOneSideOnlyFailsTheHandshakeNamingEachSide() {
        for clientHasIt in [true, false] {
            var (client, server) = self.newSession(
                clientCapabilities: clientHasIt ? .sealed : [], serverCapabilities: clientHasIt ? [] : .sealed
            )
            guard case .fail(.sealingMismatch(clientHasIt), .goAway(.protectionMismatch, let message)?) = server.receive(client.start()) else {
                Issue.record("the server took a HELLO with protection \(clientHasIt ? "on" : "off") against its own")
                continue
            }
            #expect(message.contains("is \(clientHasIt ? "on" : "off") at the client and \(clientHasIt ? "off" : "on") at the server"))
            #expect(message.contains("--no-session-encryption"))
        }
        // A client checks the CHALLENGE too: a hop cannot strip the capability there either.
        var client = HandshakeStateMachine(role: .client(token: "t"), capabilities: .sealed, maximumDataPayload: 32768)
        var plain = HandshakeStateMachine(role: .server(token: "t", authenticationRequired: true), capabilities: [], maximumDataPayload: 32768)
        guard case .hello(var hello) = client.start() else { Issue.record("no HELLO"); return }
        hello.capabilities = []
        guard case .send(let challenge) = plain.receive(.hello(hello)),
            case .fail(.sealingMismatch(clientHasIt: true), _) = client.receive(challenge)
        else {
            Issue.record("the client took a CHALLENGE without protection"); return
        }
    }

    /// A hop that puts its own key share in the HELLO or the CHALLENGE (to read the session) changes the transcript
    /// both proofs cover: the handshake fails before any key is used.
    @Test func aSwappedKeyShareFailsTheProofs() throws {
        var intruderHandshake = HandshakeStateMachine(role: .client(token: nil), capabilities: .sealed, maximumDataPayload: 1)
        let intruder = intruderHandshake.startKeyShare()

        var (client, server) = self.newSession()
        guard case .hello(var hello) = client.start() else { throw Failure("no HELLO") }
        hello.keyShare = intruder
        guard case .send(let challenge) = server.receive(.hello(hello)), case .send(let auth) = client.receive(challenge) else {
            throw Failure("handshake stopped early")
        }
        guard case .fail(.clientProofInvalid, _) = server.receive(auth) else { Issue.record("a swapped HELLO key share went unnoticed"); return }

        var (client2, server2) = self.newSession()
        guard case .send(.challenge(var challenge2)) = server2.receive(client2.start()) else { throw Failure("no CHALLENGE") }
        challenge2.keyShare = intruder
        guard case .send(let auth2) = client2.receive(.challenge(challenge2)) else { throw Failure("no AUTH") }
        guard case .fail(.clientProofInvalid, _) = server2.receive(auth2) else {
            Issue.record("a swapped CHALLENGE key share went unnoticed"); return
        }
    }

    /// A key share of small order (all zeros) would make the X25519 secret known to anyone: refused.
    @Test func aKeyShareOfSmallOrderIsRefused() throws {
        var (client, server) = self.newSession()
        guard case .hello(var hello) = client.start() else { throw Failure("no HELLO") }
        hello.keyShare = Array(repeating: 0, count: 32)
        guard case .fail(.protocolViolation(let reason), .goAway(.protocolError, _)?) = server.receive(.hello(hello)) else {
            Issue.record("an all-zero key share was accepted"); return
        }
        #expect(reason.contains("key share"))
    }

    // MARK: Golden vectors

    struct Vectors: Decodable {
        let token: String
        let client_private, client_nonce, server_private, server_nonce, session_id: String
        let hello, challenge, auth, welcome: String
        let session_key, client_to_server_key, server_to_client_key: String
        let client_plaintexts, client_sealed, server_plaintexts, server_sealed: [String]
    }

    static func vectorsFile() -> String { fixturesDirectory() + "/sealing-vectors.json" }

    /// Randomness that hands out `values` in order: the handshake's private key, nonce and session id.
    static func scripted(_ values: [String]) -> @Sendable (Int) -> [UInt8] {
        let queue = NIOLockedValueBox(values.map(hexBytes))
        return { count in
            queue.withLockedValue { queue in
                let next = queue.removeFirst()
                precondition(next.count == count, "the handshake asked for \(count) bytes, the vectors have \(next.count)")
                return next
            }
        }
    }

    @Test func theHandshakeAndTheSealedFramesMatchTheIndependentVectors() throws {
        let vectors = try JSONDecoder().decode(Vectors.self, from: Data(contentsOf: URL(fileURLWithPath: Self.vectorsFile())))
        var client = HandshakeStateMachine(
            role: .client(token: vectors.token), capabilities: .sealed, maximumDataPayload: 32768,
            randomBytes: Self.scripted([vectors.client_private, vectors.client_nonce])
        )
        var server = HandshakeStateMachine(
            role: .server(token: vectors.token, authenticationRequired: true), capabilities: .sealed, maximumDataPayload: 32768,
            randomBytes: Self.scripted([vectors.server_private, vectors.server_nonce, vectors.session_id])
        )
        let encoder = FrameEncoder()
        let hello = client.start()
        #expect(Array(buffer: encoder.encode(hello)) == hexBytes(vectors.hello))
        guard case .send(let challenge) = server.receive(hello) else { throw Failure("no CHALLENGE") }
        #expect(Array(buffer: encoder.encode(challenge)) == hexBytes(vectors.challenge))
        guard case .send(let auth) = client.receive(challenge) else { throw Failure("no AUTH") }
        #expect(Array(buffer: encoder.encode(auth)) == hexBytes(vectors.auth))
        guard case .established(let serverOutcome, let welcome?) = server.receive(auth) else { throw Failure("server not established") }
        #expect(Array(buffer: encoder.encode(welcome)) == hexBytes(vectors.welcome))
        guard case .established(let outcome, _) = client.receive(welcome) else { throw Failure("client not established") }

        #expect(outcome.sessionKey == hexBytes(vectors.session_key))
        let keys = try #require(outcome.sealingKeys)
        #expect(keys.clientToServer == hexBytes(vectors.client_to_server_key))
        #expect(keys.serverToClient == hexBytes(vectors.server_to_client_key))

        var clientCipher = SessionCipher(keys: keys, isClient: true)
        var serverCipher = SessionCipher(keys: try #require(serverOutcome.sealingKeys), isClient: false)
        for (plaintext, sealed) in zip(vectors.client_plaintexts, vectors.client_sealed) {
            var wire = ByteBuffer()
            clientCipher.seal(ByteBuffer(bytes: hexBytes(plaintext)), into: &wire)
            #expect(Array(buffer: wire) == hexBytes(sealed))
            #expect(try Array(buffer: serverCipher.open(ByteBuffer(bytes: hexBytes(sealed).dropFirst(FrameEncoder.headerLength)))) == hexBytes(plaintext))
        }
        for (plaintext, sealed) in zip(vectors.server_plaintexts, vectors.server_sealed) {
            var wire = ByteBuffer()
            serverCipher.seal(ByteBuffer(bytes: hexBytes(plaintext)), into: &wire)
            #expect(Array(buffer: wire) == hexBytes(sealed))
        }
    }

    /// The fixture is what the independent implementation computes (python3 with `cryptography`, which
    /// scripts/ensure-system-packages installs), so neither side can drift to meet the other.
    @Test func theVectorsAreWhatPythonsCryptographyComputes() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = [fixturesDirectory() + "/generate_sealing_vectors.py"]
        let output = Pipe()
        let errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        let printed = output.fileHandleForReading.readDataToEndOfFile()
        let complaint = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        try #require(process.terminationStatus == 0, "python3 fixtures/generate_sealing_vectors.py failed (needs python3-cryptography): \(complaint)")
        #expect(String(decoding: printed, as: UTF8.self) == (try String(contentsOfFile: Self.vectorsFile(), encoding: .utf8)))
    }
}

extension HandshakeStateMachine {
    /// The key share of a fresh HELLO.
    mutating func startKeyShare() -> [UInt8] {
        guard case .hello(let hello) = self.start() else { return [] }
        return hello.keyShare
    }
}
