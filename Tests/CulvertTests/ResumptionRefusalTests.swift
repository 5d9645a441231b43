@testable import Culvert
import CulvertCore
import CulvertTransport
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Testing

/// A client resuming its session meets a refusal the server sent before reading anything (GOAWAY waiting on the new
/// connection): never a crash; a busy server is waited out with the session kept, a refused resumption ends it.
@Suite struct ResumptionRefusalTests {
    /// A client session past its handshake (token "t") whose transport then dropped: detached, waiting to resume.
    func detachedClientSession() throws -> (TunnelSession, EmbeddedEventLoop) {
        let transport = ScriptedTransport()
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let session = TunnelSession(role: .client, transport: transport, configuration: SessionConfiguration(token: "t"), logger: logger)
        session.start()
        var server = HandshakeStateMachine(role: .server(token: "t", authenticationRequired: true), capabilities: [.sealed], maximumDataPayload: 32768)
        guard let hello = transport.takeSent().first, case .send(let challenge) = server.receive(hello) else {
            throw HarnessError("no HELLO")
        }
        transport.inject(challenge)
        guard let auth = transport.takeSent().first, case .established(let outcome, let welcome?) = server.receive(auth) else {
            throw HarnessError("no AUTH")
        }
        transport.inject(welcome)
        transport.sealAsPeer(outcome, peerIsClient: false)
        #expect(session.handshakeIsEstablished)
        transport.close()
        #expect(session.isDetached)
        return (session, transport.loop)
    }

    /// GOAWAY(overloaded) or GOAWAY(throttled) already buffered on the new connection (sent before the HELLO was
    /// even read): the resumption fails without a crash and the session stays detached, streams kept, to try again.
    @Test(arguments: [GoAwayCode.overloaded, .throttled])
    func aBufferedBusyRefusalLeavesTheSessionWaitingToResume(code: GoAwayCode) throws {
        let (session, _) = try self.detachedClientSession()
        let refusing = ScriptedTransport()
        refusing.preloaded = [.goAway(code: code, message: "busy; try again in 3 s")]
        session.resume(on: refusing)
        #expect(session.isDetached)
        #expect(refusing.closed)
        #expect(!session.ended.isFulfilledForTests)
    }

    /// GOAWAY(resumeRefused) already buffered ends the session as a refused resumption (the client then starts a
    /// new one), again without a crash.
    @Test func aBufferedResumeRefusalEndsTheSession() throws {
        let (session, loop) = try self.detachedClientSession()
        let refusing = ScriptedTransport()
        refusing.preloaded = [.goAway(code: .resumeRefused, message: "unknown session")]
        session.resume(on: refusing)
        loop.run()
        let reason = try session.ended.wait()
        #expect(reason.isResumeRefusal)
    }
}

extension TunnelSession {
    /// Whether the handshake has completed (tests read it on the session's loop).
    var handshakeIsEstablished: Bool { self.sessionIDString.isEmpty == false }
}

extension EventLoopFuture {
    /// Whether the future has a value already (on an `EmbeddedEventLoop`, where nothing runs in between).
    var isFulfilledForTests: Bool {
        let fulfilled = NIOLockedValueBox(false)
        self.whenComplete { _ in fulfilled.withLockedValue { $0 = true } }
        return fulfilled.withLockedValue { $0 }
    }
}
