import CulvertCore
import NIOCore
import Testing

/// The session's lifecycle as a pure state machine: every transition driven by frames and times passed in, with
/// no sockets, no loop and no sleeping.
@Suite struct SessionStateMachineTests {
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
    let target = TargetAddress(host: "127.0.0.1", port: 22)

    func settings(token: String = "token", resumption: Bool = true) -> SessionStateMachine.Settings {
        SessionStateMachine.Settings(
            token: token, authenticationRequired: true, compression: false, mux: MuxConfiguration(),
            handshakeTimeout: .seconds(10), keepaliveInterval: .seconds(25), keepaliveTimeout: .seconds(10),
            resumption: resumption, detachedGracePeriod: .seconds(60)
        )
    }

    /// The frame an action sends, if it sends one.
    func sent(_ action: SessionStateMachine.Action) -> Frame? {
        switch action {
        case .sendNow(let frame), .sendAhead(let frame): frame
        case .established(_, let reply), .resumed(_, let reply, _), .end(_, let reply): reply
        case .handOver(_, let welcome): welcome
        default: nil
        }
    }

    /// Runs a fresh handshake between a client and a server machine.
    func establishedPair(settings: SessionStateMachine.Settings? = nil) throws -> (client: SessionStateMachine, server: SessionStateMachine) {
        var client = SessionStateMachine(role: .client, settings: settings ?? self.settings(), now: self.start)
        var server = SessionStateMachine(role: .server, settings: settings ?? self.settings(), now: self.start)
        let hello = try unwrap(client.start())
        let challenge = try unwrap(self.sent(server.receive(hello, now: self.start)))
        let auth = try unwrap(self.sent(client.receive(challenge, now: self.start)))
        let serverDone = server.receive(auth, now: self.start)
        guard case .established(_, let welcome?) = serverDone else { throw Failure("server not established: \(serverDone)") }
        guard case .established = client.receive(welcome, now: self.start) else { throw Failure("client not established") }
        #expect(client.isCarryingStreams && server.isCarryingStreams)
        return (client, server)
    }

    /// Client HELLO → CHALLENGE → AUTH → WELCOME: both sides carry streams with the same session id.
    @Test func handshakeEstablishesBothSides() throws {
        let (client, server) = try self.establishedPair()
        #expect(client.sessionID != nil)
        #expect(client.sessionID == server.sessionID)
        #expect(client.acceptsNewStreams)
    }

    /// A round-trip measurement is a PING the peer answers like any other; its PONG's arrival time gives the
    /// figure exactly, one measurement at a time, and it never counts as the keepalive's pong.
    @Test func aRoundTripMeasurementTimesItsPongAndOneIsOutstandingAtATime() throws {
        var (client, server) = try self.establishedPair()
        #expect(client.roundTrip == nil)
        let ping = try unwrap(self.sent(client.measureRoundTrip(now: self.start + .seconds(1))))
        guard case .none = client.measureRoundTrip(now: self.start + .seconds(1) + .milliseconds(1)) else {
            Issue.record("a second measurement while the first is unanswered"); return
        }
        let pong = try unwrap(self.sent(server.receive(ping, now: self.start)))
        guard case .none = client.receive(pong, now: self.start + .seconds(1) + .microseconds(420)) else { Issue.record("pong not taken"); return }
        #expect(client.roundTrip == .microseconds(420))
        // Answered: the next one may go.
        #expect(self.sent(client.measureRoundTrip(now: self.start + .seconds(2))) != nil)
    }

    /// The data path changes the stream tables in place: sending DATA, receiving it and crediting it leave each
    /// side's table where it was. A table shared with a copy of the machine (what a payload bound where it lies
    /// makes) would be copied whole on each change, costing time and memory in proportion to the open streams per
    /// frame; the check sees that too.
    @Test func theDataPathChangesTheStreamTablesInPlace() throws {
        var (client, server) = try self.establishedPair()
        var ids: [StreamID] = []
        for _ in 0..<8 {
            let (id, open) = try unwrap(try client.withEstablished { try $0.mux.openStream(to: self.target) })
            guard case .stream(.openRequested) = server.receive(open, now: self.start) else { throw Failure("no open request") }
            let openOK = try unwrap(server.withEstablished { $0.mux.acceptSucceeded(id) } ?? nil)
            guard case .stream(.opened) = client.receive(openOK, now: self.start) else { throw Failure("not opened") }
            ids.append(id)
        }
        let clientTable = try unwrap(client.streamTableAddress)
        let serverTable = try unwrap(server.streamTableAddress)
        for round in 0..<3 {
            for id in ids {
                #expect(client.sendableBytes(id) > 0)
                let data = try unwrap(client.withEstablished { $0.mux.sendData(id, payload: ByteBuffer(string: "x")) })
                guard case .stream(.deliver) = server.receive(data, now: self.start) else { throw Failure("not delivered") }
                _ = server.withEstablished { $0.mux.consumed(id, bytes: 1) }
                _ = client.creditIfSessionHasRoom(id, replayLimit: 1 << 20)
                _ = client.acknowledgementState()
            }
            #expect(client.streamTableAddress == clientTable, "round \(round): the client's table was copied")
            #expect(server.streamTableAddress == serverTable, "round \(round): the server's table was copied")
        }
        // The check can tell: with a copy of the machine holding the table, the next change copies it.
        let held = client
        _ = client.withEstablished { $0.mux.sendData(ids[0], payload: ByteBuffer(string: "x")) }
        #expect(client.streamTableAddress != clientTable)
        #expect(held.streamTableAddress == clientTable)
    }

    /// A wrong token ends the server's machine with GOAWAY(authenticationFailed) to send.
    @Test func wrongTokenEndsWithAGoAway() throws {
        var client = SessionStateMachine(role: .client, settings: self.settings(token: "wrong"), now: self.start)
        var server = SessionStateMachine(role: .server, settings: self.settings(), now: self.start)
        let challenge = try unwrap(self.sent(server.receive(try unwrap(client.start()), now: self.start)))
        let auth = try unwrap(self.sent(client.receive(challenge, now: self.start)))
        guard case .end(.handshake(.clientProofInvalid), .goAway(.authenticationFailed, _)?) = server.receive(auth, now: self.start) else {
            Issue.record("no authentication failure"); return
        }
        #expect(server.isEnded)
    }

    /// The handshake timer ends a session still handshaking at its deadline, and does nothing before it.
    @Test func handshakeTimesOutOnlyAtItsDeadline() {
        var server = SessionStateMachine(role: .server, settings: self.settings(), now: self.start)
        guard case .none = server.timerFired(.handshake, now: self.start + .seconds(9)) else { Issue.record("ended early"); return }
        guard case .end(.handshakeTimedOut(10), nil) = server.timerFired(.handshake, now: self.start + .seconds(10)) else {
            Issue.record("no timeout"); return
        }
        #expect(server.isEnded)
    }

    /// A server refusing before the handshake reads nothing more; a late handshake timer does nothing.
    @Test func aRefusedSessionIgnoresWhatFollows() throws {
        var client = SessionStateMachine(role: .client, settings: self.settings(), now: self.start)
        var server = SessionStateMachine(role: .server, settings: self.settings(), now: self.start)
        #expect(server.refuse(.overloaded, "full") == .goAway(code: .overloaded, message: "full"))
        guard case .none = server.receive(try unwrap(client.start()), now: self.start) else { Issue.record("read after refusal"); return }
        #expect(server.isRefusing)
        // The client reports the refusal as the reason.
        guard case .end(.handshake(.refusedByPeer(.overloaded, "full")), _) = client.receive(.goAway(code: .overloaded, message: "full"), now: self.start) else {
            Issue.record("client did not end with the refusal"); return
        }
    }

    /// A lost transport detaches an established session: the client waits without a deadline, the server until
    /// its grace period ends, and then it ends.
    @Test func aLostTransportDetachesAndTheServerExpiresAfterItsGrace() throws {
        var (client, server) = try self.establishedPair()
        guard case .detach(.transportClosed, nil) = client.transportLost(.transportClosed("cut"), now: self.start) else {
            Issue.record("client did not detach"); return
        }
        guard case .detach(_, let expiry?) = server.transportLost(.transportClosed("cut"), now: self.start) else {
            Issue.record("server did not detach with an expiry"); return
        }
        #expect(expiry == self.start + .seconds(60))
        #expect(client.isDetached && server.isDetached)
        #expect(client.acceptsNewStreams)  // streams may open while detached; they go out once resumed
        guard case .none = server.timerFired(.detachedExpiry, now: expiry - .seconds(1)) else { Issue.record("expired early"); return }
        guard case .end(.detachedExpired(60), nil) = server.timerFired(.detachedExpiry, now: expiry) else {
            Issue.record("did not expire"); return
        }
    }

    /// Without resumption a lost transport ends the session.
    @Test func withoutResumptionALostTransportEnds() throws {
        var client = try self.establishedPair(settings: self.settings(resumption: false)).client
        guard case .end(.transportClosed("cut"), nil) = client.transportLost(.transportClosed("cut"), now: self.start) else {
            Issue.record("did not end"); return
        }
    }

    /// Detach → resume → replay: what the client sent and the server never received is replayed after the
    /// resumption; the resumption's HELLO names the session and its proof is checked by a new server connection,
    /// which hands over to the live session.
    @Test func detachResumeReplaysWhatThePeerMissed() throws {
        var (client, server) = try self.establishedPair()
        let encoder = FrameEncoder()
        // The client opens two streams; the transport drops before the server reads either OPEN.
        let frames: [Frame] = try unwrap(
            try client.withEstablished { established -> [Frame] in
                [try established.mux.openStream(to: self.target).1, try established.mux.openStream(to: self.target).1]
            }
        )
        client.withEstablished { established in
            for frame in frames { established.sequencer.recordSent(encoder.encode(frame)) }
        }
        _ = client.transportLost(.transportClosed("cut"), now: self.start)
        _ = server.transportLost(.transportClosed("cut"), now: self.start)

        let hello = try unwrap(client.resume(now: self.start + .seconds(1)))
        #expect(client.isResuming)
        var newConnection = SessionStateMachine(role: .server, settings: self.settings(), now: self.start + .seconds(1))
        guard case .lookUpResumption(let id) = newConnection.receive(hello, now: self.start + .seconds(1)) else {
            Issue.record("no lookup"); return
        }
        #expect(id == server.sessionID)
        let target = (sessionKey: try unwrap(server.sessionKey), capabilities: Capabilities.sealed)
        let challenge = try unwrap(self.sent(newConnection.resumptionLookedUp(target, hello: hello, now: self.start)))
        let auth = try unwrap(self.sent(client.receive(challenge, now: self.start + .seconds(1))))
        guard case .handOver(let outcome, let welcome) = newConnection.receive(auth, now: self.start + .seconds(1)) else {
            Issue.record("no hand-over"); return
        }
        #expect(newConnection.isEnded)
        guard case .resumed(_, let reply?, let serverReplay) = server.adopt(outcome, welcome: welcome, now: self.start + .seconds(1)) else {
            Issue.record("server did not resume"); return
        }
        #expect(serverReplay.isEmpty)
        guard case .resumed(_, nil, let clientReplay) = client.receive(reply, now: self.start + .seconds(1)) else {
            Issue.record("client did not resume"); return
        }
        #expect(clientReplay.count == 2)
        #expect(client.resumptions == 1 && server.resumptions == 1)
        #expect(client.isCarryingStreams && server.isCarryingStreams)
        // The replayed frames open the streams on the server.
        var decoder = FrameDecoder(maximumPayloadLength: 1 << 16)
        var replayed = ByteBuffer()
        for var buffer in clientReplay { replayed.writeBuffer(&buffer) }
        let open = try unwrap(try decoder.decode(buffer: &replayed))
        guard case .stream(.openRequested(_, self.target)) = server.receive(open, now: self.start) else { Issue.record("no open"); return }
    }

    /// A proof that does not verify ends only the new connection (counted as a failed authentication by its
    /// owner); the live session stays detached.
    @Test func aForgedResumptionEndsOnlyItsConnection() throws {
        var (client, server) = try self.establishedPair()
        _ = server.transportLost(.transportClosed("cut"), now: self.start)
        _ = client.transportLost(.transportClosed("cut"), now: self.start)
        let hello = try unwrap(client.resume(now: self.start))
        var newConnection = SessionStateMachine(role: .server, settings: self.settings(), now: self.start)
        _ = newConnection.receive(hello, now: self.start)
        let wrongKey = (sessionKey: [UInt8](repeating: 7, count: 32), capabilities: Capabilities.sealed)
        let challenge = try unwrap(self.sent(newConnection.resumptionLookedUp(wrongKey, hello: hello, now: self.start)))
        let auth = try unwrap(self.sent(client.receive(challenge, now: self.start)))
        guard case .end(.handshake(.resumeProofInvalid), _) = newConnection.receive(auth, now: self.start) else {
            Issue.record("forged proof accepted"); return
        }
        #expect(server.isDetached)
    }

    /// A server that no longer has the session answers the resumption's HELLO with a refusal, and the client's
    /// session ends as "resume refused" (it then starts a new one): resume after grace.
    @Test func resumingAfterTheGraceIsRefused() throws {
        var client = try self.establishedPair().client
        _ = client.transportLost(.transportClosed("cut"), now: self.start)
        let hello = try unwrap(client.resume(now: self.start + .seconds(120)))
        var restarted = SessionStateMachine(role: .server, settings: self.settings(), now: self.start + .seconds(120))
        _ = restarted.receive(hello, now: self.start)
        let refusal = restarted.resumptionLookedUp(nil, hello: hello, now: self.start + .seconds(120))
        let answer = try unwrap(self.sent(refusal))
        guard case .end(let reason, _) = client.receive(answer, now: self.start + .seconds(120)) else {
            Issue.record("client did not end"); return
        }
        guard case .handshake(.refusedByPeer(.resumeRefused, _)) = reason else {
            Issue.record("ended with \(reason), not a resume refusal"); return
        }
        #expect(client.isEnded)
    }

    /// GOAWAY while resuming: a busy server (throttled, overloaded) keeps the session, so the client detaches and
    /// tries again; any other GOAWAY ends it.
    @Test func goAwayWhileResumingDetachesWhenBusyAndEndsOtherwise() throws {
        var client = try self.establishedPair().client
        _ = client.transportLost(.transportClosed("cut"), now: self.start)
        _ = client.resume(now: self.start)
        guard case .detach(.handshake(.refusedByPeer(.throttled, _)), nil) = client.receive(.goAway(code: .throttled, message: "wait"), now: self.start) else {
            Issue.record("busy refusal did not detach"); return
        }
        #expect(client.isDetached && !client.isResuming)
        _ = client.resume(now: self.start)
        guard case .end = client.receive(.goAway(code: .protocolError, message: "no"), now: self.start) else {
            Issue.record("did not end"); return
        }
    }

    /// No answer to a resumption by its deadline: the driver is told to abandon that connection (and the session
    /// detaches again when it closes).
    @Test func anUnansweredResumptionIsAbandoned() throws {
        var client = try self.establishedPair().client
        _ = client.transportLost(.transportClosed("cut"), now: self.start)
        _ = client.resume(now: self.start)
        guard case .abandonResumption = client.timerFired(.handshake, now: self.start + .seconds(10)) else {
            Issue.record("not abandoned"); return
        }
        guard case .detach = client.transportLost(.transportClosed("closed"), now: self.start + .seconds(10)) else {
            Issue.record("did not detach again"); return
        }
    }

    /// Shutdown sends GOAWAY and stops new streams; a peer's normal GOAWAY does the same on the other side.
    @Test func shutdownGoesAwayOnBothSides() throws {
        var (client, server) = try self.establishedPair()
        let goAway = try unwrap(self.sent(server.shutdown()))
        #expect(server.isGoingAway && !server.acceptsNewStreams)
        guard case .peerGoingAway = client.receive(goAway, now: self.start) else { Issue.record("client not going away"); return }
        #expect(client.isGoingAway && !client.acceptsNewStreams)
    }

    /// Runs a resumption of the detached `client` and `server` over a new server connection; returns what each
    /// side's resumption action was.
    func resume(
        _ client: inout SessionStateMachine, _ server: inout SessionStateMachine, at now: NIODeadline
    ) throws -> (client: SessionStateMachine.Action, server: SessionStateMachine.Action) {
        let hello = try unwrap(client.resume(now: now))
        var newConnection = SessionStateMachine(role: .server, settings: self.settings(), now: now)
        _ = newConnection.receive(hello, now: now)
        let target = (sessionKey: try unwrap(server.sessionKey), capabilities: Capabilities.sealed)
        let challenge = try unwrap(self.sent(newConnection.resumptionLookedUp(target, hello: hello, now: now)))
        let auth = try unwrap(self.sent(client.receive(challenge, now: now)))
        guard case .handOver(let outcome, let welcome) = newConnection.receive(auth, now: now) else { throw Failure("no hand-over") }
        let serverAction = server.adopt(outcome, welcome: welcome, now: now)
        let reply = try unwrap(self.sent(serverAction))
        return (client.receive(reply, now: now), serverAction)
    }

    /// A session going away whose transport drops detaches like any other and is resumed still going away: its
    /// open streams finish on it, and neither side takes a new stream on it.
    @Test func aSessionGoingAwayThatLosesItsTransportIsResumedStillGoingAway() throws {
        var (client, server) = try self.establishedPair()
        let goAway = try unwrap(self.sent(server.shutdown()))
        _ = client.receive(goAway, now: self.start)
        guard case .detach = client.transportLost(.transportClosed("cut"), now: self.start) else { Issue.record("client ended"); return }
        guard case .detach(_, let expiry?) = server.transportLost(.transportClosed("cut"), now: self.start) else {
            Issue.record("server ended"); return
        }
        #expect(expiry == self.start + .seconds(60))
        #expect(client.isDetached && client.isGoingAway && !client.acceptsNewStreams)
        #expect(server.isDetached && server.isGoingAway && !server.acceptsNewStreams)

        let (clientResumed, serverResumed) = try self.resume(&client, &server, at: self.start + .seconds(1))
        guard case .resumed = clientResumed, case .resumed = serverResumed else { Issue.record("not resumed"); return }
        #expect(client.isCarryingStreams && client.isGoingAway && !client.acceptsNewStreams)
        #expect(server.isCarryingStreams && server.isGoingAway && !server.acceptsNewStreams)
        // The side that shut down says so again (the first GOAWAY may have been lost with the old transport); the
        // side told has nothing to say, and a repeated GOAWAY changes nothing on it.
        let repeated = try unwrap(server.goAwayAfterResumption)
        #expect(client.goAwayAfterResumption == nil)
        guard case .none = client.receive(repeated, now: self.start + .seconds(1)) else { Issue.record("a repeated GOAWAY did something"); return }
    }

    /// Shut down while detached, a session does not end: its streams get their grace period, and the GOAWAY it
    /// could not send goes out once it is resumed.
    @Test func aSessionShutDownWhileDetachedSaysItsGoAwayOnceResumed() throws {
        var (client, server) = try self.establishedPair()
        _ = client.transportLost(.transportClosed("cut"), now: self.start)
        _ = server.transportLost(.transportClosed("cut"), now: self.start)
        guard case .none = server.shutdown() else { Issue.record("a detached session ended or sent on shutdown"); return }
        #expect(server.isDetached && server.isGoingAway && !server.acceptsNewStreams)
        #expect(server.goAwayAfterResumption == nil, "said only once resumed")

        _ = try self.resume(&client, &server, at: self.start + .seconds(1))
        #expect(server.isGoingAway && server.isCarryingStreams)
        #expect(!client.isGoingAway, "the client learns it from the GOAWAY")
        let owed = try unwrap(server.goAwayAfterResumption)
        guard case .peerGoingAway = client.receive(owed, now: self.start + .seconds(1)) else { Issue.record("client not going away"); return }
    }

    /// A draining server refuses a HELLO that would start a new session with GOAWAY `overloaded` and the reason,
    /// and still takes a resumption's HELLO to the session it names.
    @Test func aServerRefusingNewSessionsStillLooksUpResumptions() throws {
        var draining = self.settings()
        draining.refusesNewSession = { "draining" }
        var client = SessionStateMachine(role: .client, settings: self.settings(), now: self.start)
        var server = SessionStateMachine(role: .server, settings: draining, now: self.start)
        let hello = try unwrap(client.start())
        guard case .refuseSession(.overloaded, "draining") = server.receive(hello, now: self.start) else {
            Issue.record("a new session was not refused"); return
        }
        #expect(server.refuse(.overloaded, "draining") == .goAway(code: .overloaded, message: "draining"))
        #expect(server.isRefusing)
        var established = try self.establishedPair().client
        _ = established.transportLost(.transportClosed("cut"), now: self.start)
        var newConnection = SessionStateMachine(role: .server, settings: draining, now: self.start)
        guard case .lookUpResumption = newConnection.receive(try unwrap(established.resume(now: self.start)), now: self.start) else {
            Issue.record("a resumption was refused"); return
        }
    }

    /// A session that carries no streams (still handshaking) ends at once on shutdown.
    @Test func shutdownWhileHandshakingEndsAtOnce() {
        var client = SessionStateMachine(role: .client, settings: self.settings(), now: self.start)
        _ = client.start()
        guard case .end(.shutdown, nil) = client.shutdown() else { Issue.record("did not end"); return }
    }

    /// Keepalive: a quiet transport gets a PING; one whose PONG is overdue is declared dead and the session
    /// detaches.
    @Test func anUnansweredPingDetachesTheSession() throws {
        var client = try self.establishedPair().client
        guard case .sendNow(.ping) = client.keepaliveTick(now: self.start + .seconds(25)) else { Issue.record("no ping"); return }
        guard case .none = client.keepaliveTick(now: self.start + .seconds(30)) else { Issue.record("dead too early"); return }
        guard case .detach(.keepaliveTimeout, nil) = client.keepaliveTick(now: self.start + .seconds(35)) else {
            Issue.record("not declared dead"); return
        }
    }

    /// PING is answered with PONG; an ACK for more than was sent is a protocol violation that ends the session.
    @Test func pingIsAnsweredAndABadAckEndsTheSession() throws {
        var client = try self.establishedPair().client
        guard case .sendNow(.pong(7)) = client.receive(.ping(7), now: self.start) else { Issue.record("no pong"); return }
        guard case .protocolFailure(.goAway(.protocolError, _), _) = client.receive(.ack(received: 99), now: self.start) else {
            Issue.record("bad ACK accepted"); return
        }
        #expect(client.isEnded)
    }

    /// LISTEN goes from client to server and its answers back: each arrives as its own action on the side that may
    /// receive it, and the other direction is a protocol violation.
    @Test func listenFramesReachTheirSideAndTheWrongDirectionEndsTheSession() throws {
        var (client, server) = try self.establishedPair()
        let address = TargetAddress(host: "127.0.0.1", port: 9000)
        guard case .listenRequested(1, address) = server.receive(.listen(requestID: 1, address: address), now: self.start) else {
            Issue.record("the server did not hear the LISTEN"); return
        }
        guard case .listening(1, 9000) = client.receive(.listenOK(requestID: 1, port: 9000), now: self.start) else {
            Issue.record("the client did not hear LISTEN_OK"); return
        }
        guard case .listenRefused(3, .notAllowed, "no") = client.receive(.listenFail(requestID: 3, reason: .notAllowed, message: "no"), now: self.start)
        else {
            Issue.record("the client did not hear LISTEN_FAIL"); return
        }
        guard case .protocolFailure = client.receive(.listen(requestID: 2, address: address), now: self.start) else {
            Issue.record("a client took a LISTEN"); return
        }
        guard case .protocolFailure = server.receive(.listenOK(requestID: 1, port: 9000), now: self.start) else {
            Issue.record("a server took a LISTEN_OK"); return
        }
    }

    /// A handshake frame after the handshake is a protocol violation.
    @Test func aHandshakeFrameAfterTheHandshakeEndsTheSession() throws {
        var server = try self.establishedPair().server
        let hello = Frame.hello(Hello(
            version: HandshakeStateMachine.protocolVersion, capabilities: [], nonce: [UInt8](repeating: 0, count: 32),
            keyShare: [UInt8](repeating: 9, count: 32), maximumDataPayload: 32768
        ))
        guard case .protocolFailure = server.receive(hello, now: self.start) else {
            Issue.record("accepted"); return
        }
    }
}

struct Failure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
