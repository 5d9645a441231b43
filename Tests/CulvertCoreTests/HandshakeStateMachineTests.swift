import CulvertCore
import NIOCore
import Testing

@Suite struct HandshakeStateMachineTests {
    struct Pair {
        var client: HandshakeStateMachine
        var server: HandshakeStateMachine
    }

    func makePair(clientToken: String?, serverToken: String?, authRequired: Bool = true) -> Pair {
        Pair(
            client: HandshakeStateMachine(role: .client(token: clientToken), capabilities: [.compression],
                                          maximumDataPayload: 32768),
            server: HandshakeStateMachine(role: .server(token: serverToken, authenticationRequired: authRequired),
                                          capabilities: [.compression, .resumption], maximumDataPayload: 16384)
        )
    }

    /// With the same token both sides establish, agree on the session id, key and capability intersection.
    @Test func matchingTokensEstablishTheSession() throws {
        var pair = self.makePair(clientToken: "s3cret", serverToken: "s3cret")
        let hello = pair.client.start()
        guard case .send(let challenge) = pair.server.receive(hello) else { Issue.record("no challenge"); return }
        guard case .send(let auth) = pair.client.receive(challenge) else { Issue.record("no auth"); return }
        guard case .established(let serverOutcome, let welcome?) = pair.server.receive(auth) else {
            Issue.record("server did not establish"); return
        }
        guard case .established(let clientOutcome, nil) = pair.client.receive(welcome) else {
            Issue.record("client did not establish"); return
        }
        #expect(clientOutcome.sessionID == serverOutcome.sessionID)
        #expect(clientOutcome.sessionKey == serverOutcome.sessionKey)
        #expect(clientOutcome.sessionID.count == 16)
        #expect(clientOutcome.capabilities == [.compression])
        #expect(clientOutcome.peerMaximumDataPayload == 16384)
        #expect(serverOutcome.peerMaximumDataPayload == 32768)
    }

    /// A wrong token is refused by the server with GOAWAY(authenticationFailed), and the token is never sent.
    @Test func wrongTokenIsRefused() throws {
        var pair = self.makePair(clientToken: "wrong", serverToken: "right")
        let hello = pair.client.start()
        guard case .send(let challenge) = pair.server.receive(hello) else { Issue.record("no challenge"); return }
        guard case .send(let auth) = pair.client.receive(challenge) else { Issue.record("no auth"); return }
        let encoded = FrameEncoder().encode(auth)
        #expect(!Array(encoded.readableBytesView).containsSubsequence(Array("wrong".utf8)))
        guard case .fail(.clientProofInvalid, .goAway(.authenticationFailed, _)?) = pair.server.receive(auth) else {
            Issue.record("server accepted a wrong token"); return
        }
    }

    /// A recorded AUTH replayed into a new handshake (new server nonce) is refused.
    @Test func replayedAuthIsRefused() throws {
        var first = self.makePair(clientToken: "t", serverToken: "t")
        let hello = first.client.start()
        guard case .send(let challenge) = first.server.receive(hello) else { Issue.record("no challenge"); return }
        guard case .send(let recordedAuth) = first.client.receive(challenge) else { Issue.record("no auth"); return }

        var attacked = HandshakeStateMachine(role: .server(token: "t", authenticationRequired: true),
                                             capabilities: [], maximumDataPayload: 16384)
        _ = attacked.receive(hello)
        guard case .fail(.clientProofInvalid, _) = attacked.receive(recordedAuth) else {
            Issue.record("replayed handshake accepted"); return
        }
    }

    /// A client whose token the server cannot prove (e.g. a --no-auth server) refuses the server.
    @Test func clientRefusesServerWithoutItsToken() throws {
        var pair = self.makePair(clientToken: "mine", serverToken: nil, authRequired: false)
        let hello = pair.client.start()
        guard case .send(let challenge) = pair.server.receive(hello) else { Issue.record("no challenge"); return }
        guard case .send(let auth) = pair.client.receive(challenge) else { Issue.record("no auth"); return }
        guard case .established(_, let welcome?) = pair.server.receive(auth) else { Issue.record("no welcome"); return }
        guard case .fail(.serverProofInvalid, _) = pair.client.receive(welcome) else {
            Issue.record("client accepted a server that does not know its token"); return
        }
    }

    /// A HELLO of another protocol version is refused with GOAWAY(unsupportedVersion).
    @Test func wrongVersionIsRefused() {
        var server = HandshakeStateMachine(role: .server(token: "t", authenticationRequired: true),
                                           capabilities: [], maximumDataPayload: 16384)
        let hello = Frame.hello(Hello(version: 9, capabilities: [], nonce: Array(repeating: 1, count: 32),
                                      keyShare: Array(repeating: 9, count: 32), maximumDataPayload: 1024))
        guard case .fail(.unsupportedVersion(9), .goAway(.unsupportedVersion, _)?) = server.receive(hello) else {
            Issue.record("version 9 accepted"); return
        }
    }

    /// Stream frames before the handshake ends are a protocol violation.
    @Test func streamFrameDuringHandshakeIsRefused() {
        var server = HandshakeStateMachine(role: .server(token: "t", authenticationRequired: true),
                                           capabilities: [], maximumDataPayload: 16384)
        guard case .fail(.protocolViolation, .goAway(.protocolError, _)?) = server.receive(.fin(streamID: 1)) else {
            Issue.record("FIN accepted during the handshake"); return
        }
    }

    /// Runs a resumption handshake of session `id`: the client holds `clientKey`, the server `serverKey`.
    func resume(id: [UInt8], clientKey: [UInt8], serverKey: [UInt8]) -> (client: HandshakeStateMachine.Action?, server: HandshakeStateMachine.Action) {
        var client = HandshakeStateMachine(
            role: .resumingClient(sessionID: id, sessionKey: clientKey, received: 41), capabilities: [], maximumDataPayload: 32768
        )
        var server = HandshakeStateMachine(
            role: .resumingServer(sessionID: id, sessionKey: serverKey, received: 17), capabilities: [], maximumDataPayload: 32768
        )
        let hello = client.start()
        guard case .hello(let helloMessage) = hello, helloMessage.resumeSessionID == id else {
            return (nil, .fail(.protocolViolation("HELLO does not name the session"), send: nil))
        }
        guard case .send(let challenge) = server.receive(hello), case .send(let auth) = client.receive(challenge) else {
            return (nil, .fail(.protocolViolation("no challenge or auth"), send: nil))
        }
        let serverAction = server.receive(auth)
        guard case .established(_, let welcome?) = serverAction else { return (nil, serverAction) }
        return (client.receive(welcome), serverAction)
    }

    /// A client holding the session key resumes: both keep the session's id and key, and each learns how many
    /// reliable frames the other has received.
    @Test func resumptionWithTheSessionKeyRestoresTheSession() throws {
        let id = Array(repeating: UInt8(7), count: 16)
        let key = Array(repeating: UInt8(9), count: 32)
        let (client, server) = self.resume(id: id, clientKey: key, serverKey: key)
        guard case .established(let serverOutcome, _) = server, case .established(let clientOutcome, nil)? = client else {
            Issue.record("resumption failed: \(server), \(String(describing: client))")
            return
        }
        #expect(serverOutcome.sessionID == id && clientOutcome.sessionID == id)
        #expect(serverOutcome.sessionKey == key && clientOutcome.sessionKey == key)
        #expect(serverOutcome.peerReceived == 41)
        #expect(clientOutcome.peerReceived == 17)
    }

    /// A resumption with a wrong session key is refused with GOAWAY(resumeRefused), and the server learns that the
    /// proof was wrong (it counts as a failed authentication).
    @Test func resumptionWithAWrongSessionKeyIsRefused() {
        let id = Array(repeating: UInt8(7), count: 16)
        let (_, server) = self.resume(id: id, clientKey: Array(repeating: 1, count: 32), serverKey: Array(repeating: 2, count: 32))
        guard case .fail(.resumeProofInvalid, .goAway(.resumeRefused, _)?) = server else {
            Issue.record("got \(server)")
            return
        }
    }

    /// A server that is not resuming refuses a HELLO that names a session.
    @Test func plainServerRefusesAResumeHello() {
        var client = HandshakeStateMachine(
            role: .resumingClient(sessionID: [1, 2, 3], sessionKey: [4], received: 0), capabilities: [], maximumDataPayload: 1024
        )
        var server = HandshakeStateMachine(role: .server(token: "t", authenticationRequired: true), capabilities: [], maximumDataPayload: 1024)
        guard case .fail(.resumeRefused, .goAway(.resumeRefused, _)?) = server.receive(client.start()) else {
            Issue.record("resume HELLO was not refused")
            return
        }
    }
}

extension Array where Element: Equatable {
    func containsSubsequence(_ needle: [Element]) -> Bool {
        guard needle.count <= self.count else { return false }
        return (0...(self.count - needle.count)).contains { Array(self[$0..<($0 + needle.count)]) == needle }
    }
}
