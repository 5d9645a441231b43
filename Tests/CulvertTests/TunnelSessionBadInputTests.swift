@testable import Culvert
import CulvertCore
import CulvertTransport
import CompressNIO
import Logging
import NIOCore
import NIOEmbedded
import Testing

/// A server session fed bad input by a scripted client: each case ends the stream or the session with the right
/// code, never a crash.
@Suite struct TunnelSessionBadInputTests {
    /// A server session past the handshake (token "t"), and the scripted transport that plays the client.
    func establishedServerSession() throws -> (TunnelSession, ScriptedTransport) {
        let (session, transport) = self.startedServerSession(token: "t")
        var client = HandshakeStateMachine(role: .client(token: "t"), capabilities: [.sealed], maximumDataPayload: 32768)
        transport.inject(client.start())
        guard let challenge = transport.takeSent().first, case .challenge = challenge,
            case .send(let auth) = client.receive(challenge)
        else {
            throw HarnessError("no challenge")
        }
        transport.inject(auth)
        guard let welcome = transport.takeSent().first, case .established(let outcome, _) = client.receive(welcome) else {
            throw HarnessError("no welcome")
        }
        transport.sealAsPeer(outcome, peerIsClient: true)
        return (session, transport)
    }

    /// A server session that has started and waits for HELLO.
    func startedServerSession(token: String) -> (TunnelSession, ScriptedTransport) {
        let transport = ScriptedTransport()
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let session = TunnelSession(role: .server, transport: transport,
                                    configuration: SessionConfiguration(token: token), logger: logger)
        session.start()
        return (session, transport)
    }

    /// An unknown frame type ends the session with GOAWAY(protocolError).
    @Test func unknownFrameTypeEndsTheSessionWithGoAway() throws {
        let (session, transport) = try self.establishedServerSession()
        transport.inject(ByteBuffer(bytes: [0x7F, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
        #expect(transport.takeSent().contains { if case .goAway(.protocolError, _) = $0 { true } else { false } })
        #expect(transport.closed)
        guard case .protocolViolation(.protocolError, _)? = try? session.ended.wait() else {
            Issue.record("session did not end with a protocol violation"); return
        }
    }

    /// A frame longer than the maximum ends the session with GOAWAY(frameTooLarge) without buffering it.
    @Test func oversizedFrameEndsTheSessionWithGoAway() throws {
        let (_, transport) = try self.establishedServerSession()
        transport.inject(ByteBuffer(bytes: [0x13, 0, 0, 0, 0, 1, 0x7F, 0, 0, 0]))
        #expect(transport.takeSent().contains { if case .goAway(.frameTooLarge, _) = $0 { true } else { false } })
        #expect(transport.closed)
    }

    /// DATA for a stream that never existed gets RST(unknownStream); the session goes on.
    @Test func dataForAnUnknownStreamIsReset() throws {
        let (_, transport) = try self.establishedServerSession()
        transport.inject(.data(streamID: 41, flags: [], payload: ByteBuffer(string: "x")))
        #expect(transport.takeSent().contains { if case .rst(41, .unknownStream, _) = $0 { true } else { false } })
        #expect(!transport.closed)
        transport.inject(.ping(5))
        #expect(transport.takeSent().contains(.pong(5)))
    }

    /// An OPEN for a target outside the (empty) allowlist gets OPEN_FAIL(notAllowed) from a server without an
    /// opener; the session goes on.
    @Test func openWithoutAnOpenerIsRefused() throws {
        let (_, transport) = try self.establishedServerSession()
        transport.inject(.open(streamID: 1, initialWindow: 65536, target: .init(host: "127.0.0.1", port: 9)))
        #expect(transport.takeSent().contains { if case .openFail(1, _, _) = $0 { true } else { false } })
        #expect(!transport.closed)
    }

    /// A compressed DATA frame that inflates past the maximum DATA size ends that stream with
    /// RST(decompressionBomb); the session goes on.
    @Test func decompressionBombResetsOnlyItsStream() throws {
        let transport = ScriptedTransport()
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let session = TunnelSession(
            role: .server, transport: transport,
            configuration: SessionConfiguration(token: "t", compression: CompressionSettings(enabled: true)), logger: logger
        )
        session.connector = EmbeddedTargetConnector()
        session.start()
        var client = HandshakeStateMachine(role: .client(token: "t"), capabilities: [.compression, .sealed], maximumDataPayload: 32768)
        transport.inject(client.start())
        guard let challenge = transport.takeSent().first, case .send(let auth) = client.receive(challenge) else {
            Issue.record("no challenge"); return
        }
        transport.inject(auth)
        guard let welcome = transport.takeSent().first, case .established(let outcome, _) = client.receive(welcome) else {
            Issue.record("no welcome"); return
        }
        transport.sealAsPeer(outcome, peerIsClient: true)
        #expect(session.compressionEnabled)
        transport.inject(.open(streamID: 1, initialWindow: 65536, target: .init(host: "127.0.0.1", port: 9)))
        #expect(transport.takeSent().contains { if case .openOK(1, _) = $0 { true } else { false } })

        var zeros = ByteBuffer(repeating: 0, count: 4 * 1024 * 1024)
        let bomb = try zeros.compressStream(
            with: try ZlibCompressor(algorithm: .deflate, configuration: ZlibConfiguration(windowSize: 15, compressionLevel: 9, memoryLevel: 8)),
            flush: .sync
        )
        #expect(bomb.readableBytes < 8 * 1024)
        transport.inject(.data(streamID: 1, flags: .compressed, payload: bomb))
        #expect(transport.takeSent().contains { if case .rst(1, .decompressionBomb, _) = $0 { true } else { false } })
        #expect(!transport.closed)
        transport.inject(.ping(9))
        #expect(transport.takeSent().contains(.pong(9)))
    }

    /// A protocol violation while DATA waits in the batch drops that DATA whole: the GOAWAY goes out alone and
    /// intact (a payload waiting to go out after its header once landed inside the GOAWAY instead, and the peer read
    /// the stream's bytes as its code and message).
    @Test func aProtocolViolationWithDataWaitingSendsTheGoAwayAloneAndIntact() throws {
        let (session, transport) = try self.establishedServerSession()
        let connector = RecordingEmbeddedConnector()
        session.connector = connector
        transport.inject(.open(streamID: 1, initialWindow: 1 << 20, target: .init(host: "127.0.0.1", port: 9)))
        #expect(transport.takeSent().contains { if case .openOK(1, _) = $0 { true } else { false } })
        // The target answers with more than is copied into the batch; the flush waits for the loop.
        let target = try #require(connector.channels.first)
        try target.writeInbound(ByteBuffer(repeating: 0x07, count: 4096))
        transport.injectUnsealed(ByteBuffer(bytes: [0x7F, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
        let sent = transport.takeSent()
        #expect(sent.count == 1, "sent \(sent)")
        guard case .goAway(.protocolError, let message)? = sent.last else {
            Issue.record("no intact GOAWAY: \(sent)"); return
        }
        #expect(message == "unknown frame type 0x7f", "\(message)")
    }

    /// A wrong token ends the handshake with GOAWAY(authenticationFailed) and closes the transport.
    @Test func wrongTokenGetsGoAway() throws {
        let (_, transport) = self.startedServerSession(token: "right")
        var client = HandshakeStateMachine(role: .client(token: "wrong"), capabilities: [.sealed], maximumDataPayload: 32768)
        transport.inject(client.start())
        guard let challenge = transport.takeSent().first, case .send(let auth) = client.receive(challenge) else {
            Issue.record("no challenge"); return
        }
        transport.inject(auth)
        #expect(transport.takeSent().contains { if case .goAway(.authenticationFailed, _) = $0 { true } else { false } })
        #expect(transport.closed)
    }
}

struct HarnessError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}


/// Connects every stream to a new `EmbeddedChannel` on the session's (embedded) loop: a target that takes
/// whatever it is sent.
/// An ``EmbeddedTargetConnector`` that keeps the targets it made, for a test to play them.
final class RecordingEmbeddedConnector: StreamConnector, @unchecked Sendable {
    // @unchecked: used only on the test's EmbeddedEventLoop.
    private(set) var channels: [EmbeddedChannel] = []

    func connect(to target: TargetAddress, on eventLoop: any EventLoop, logger: Logger) -> EventLoopFuture<any Channel> {
        let channel = EmbeddedChannel(loop: eventLoop as! EmbeddedEventLoop)
        self.channels.append(channel)
        return eventLoop.makeSucceededFuture(channel)
    }
}

struct EmbeddedTargetConnector: StreamConnector {
    func connect(to target: TargetAddress, on eventLoop: any EventLoop, logger: Logger) -> EventLoopFuture<any Channel> {
        let loop = eventLoop as! EmbeddedEventLoop
        return eventLoop.makeSucceededFuture(EmbeddedChannel(loop: loop))
    }
}
