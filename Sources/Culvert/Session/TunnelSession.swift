import CompressNIO
import CulvertCore
import CulvertTransport
import Logging
import NIOConcurrencyHelpers
import NIOCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One tunnel session: drives the handshake, multiplexer, sequencer and keepalive state machines over a
/// ``TransportConnection``, and moves bytes between the streams' local sockets and the transport.
///
/// A session and all its stream sockets live on one event loop, so the data path takes no locks and makes no
/// thread hops. Every method must be called on ``eventLoop``.
public final class TunnelSession: TransportConnectionDelegate, @unchecked Sendable {
    // @unchecked: all mutable state is confined to `eventLoop`.

    public enum Role: Sendable {
        case client
        case server
    }

    /// Server side: asked to connect a peer-opened stream to its target. Answer with
    /// ``targetConnected(_:channel:)`` or ``targetFailed(_:reason:message:)``.
    typealias TargetOpener = (TunnelSession, StreamID, TargetAddress) -> Void

    public let role: Role
    public let eventLoop: any EventLoop
    public let configuration: SessionConfiguration
    private(set) var logger: Logger

    private(set) var transport: (any TransportConnection)?
    private var handshake: HandshakeStateMachine
    private var mux: MuxStateMachine?
    private var sequencer = ReliableSequencer()
    private var keepalive: KeepaliveStateMachine
    private var decoder: NIOSingleStepByteToMessageProcessor<FrameDecoder>
    private let encoder = FrameEncoder()
    private var outbound: ByteBuffer
    /// Where the reliable frames of the unsent batch lie in `outbound`. They are handed to the replay buffer (as
    /// slices) only when the batch is sent: a slice taken earlier would make every later write into `outbound`
    /// copy the whole buffer.
    private var unsentReliableFrames: [(start: Int, length: Int)] = []
    private var flushScheduled = false
    private var endpoints: [StreamID: StreamEndpoint] = [:]
    private var unflushedEndpoints: [StreamEndpoint] = []
    private var ackTimer: Scheduled<Void>?
    private var handshakeTimer: Scheduled<Void>?
    private var keepaliveTask: RepeatedTask?
    private var goingAway = false
    /// Both sides agreed on compression in the handshake.
    public private(set) var compressionEnabled = false
    private var isEnded = false
    private let establishedPromise: EventLoopPromise<HandshakeStateMachine.Outcome>
    private let endedPromise: EventLoopPromise<SessionError>

    var targetOpener: TargetOpener?
    /// Client: the transport was lost and the session waits, streams open, for ``resume(on:)``.
    var onDetached: ((TunnelSession, SessionError) -> Void)?
    /// Client: the session was resumed on a new transport connection.
    var onResumed: ((TunnelSession) -> Void)?
    /// Server: the live session a HELLO on this (new) connection names, if this server has it. The resumption's
    /// proof is checked here, on the new connection, with that session's key; only a proof that verifies hands the
    /// connection to that session, so a stranger who saw its id cannot touch it.
    var resumeLookup: (([UInt8]) -> ResumableSession?)?
    /// Server: the session this connection's HELLO asked to resume, while its proof is awaited.
    private var resumeTarget: ResumableSession?
    /// The session id and key, once established (kept to resume the session).
    private(set) var sessionID: [UInt8] = []
    private var sessionKey: [UInt8] = []
    /// A resumption handshake runs on the current transport.
    private var resuming = false
    /// The transport was lost; the session waits to be resumed.
    public private(set) var isDetached = false
    private var detachTimer: Scheduled<Void>?
    /// Times the session was resumed on a new transport connection.
    public private(set) var resumptions = 0
    /// Set when the server refused this session before its handshake.
    private var refusal: (code: GoAwayCode, message: String)?
    /// The session's counters so far.
    public private(set) var statistics = SessionStatistics()
    /// The session id, once established (hex).
    public private(set) var sessionIDString = ""

    /// Succeeds when the handshake completes; fails with ``SessionError`` when it does not.
    public var established: EventLoopFuture<HandshakeStateMachine.Outcome> { self.establishedPromise.futureResult }
    /// Succeeds, with the reason, when the session has ended.
    public var ended: EventLoopFuture<SessionError> { self.endedPromise.futureResult }
    /// The transport that carries the session.
    public var transportKind: TransportKind? { self.transport?.kind }
    /// Whether the current transport sends upstream in short requests because the path holds or cuts streaming
    /// request bodies (read on ``eventLoop``).
    public var upstreamUsesShortRequests: Bool { self.transport?.upstreamUsesShortRequests ?? false }
    /// Streams currently open.
    public var streamCount: Int { self.endpoints.count }

    init(role: Role, transport: any TransportConnection, configuration: SessionConfiguration, logger: Logger) {
        self.role = role
        self.eventLoop = transport.eventLoop
        self.configuration = configuration
        self.logger = logger
        self.transport = transport
        let handshakeRole: HandshakeStateMachine.Role =
            switch role {
            case .client: .client(token: configuration.token)
            case .server: .server(token: configuration.token, authenticationRequired: configuration.authenticationRequired)
            }
        self.handshake = HandshakeStateMachine(
            role: handshakeRole,
            capabilities: configuration.compression.enabled ? [.compression] : [],
            maximumDataPayload: UInt32(configuration.mux.maximumDataPayload)
        )
        self.keepalive = KeepaliveStateMachine(
            interval: configuration.keepaliveInterval,
            timeout: configuration.keepaliveTimeout,
            now: .now()
        )
        self.decoder = Self.makeDecoder(configuration)
        self.outbound = Self.makeOutboundBuffer()
        self.establishedPromise = transport.eventLoop.makePromise()
        self.endedPromise = transport.eventLoop.makePromise()
    }

    private static func makeDecoder(_ configuration: SessionConfiguration) -> NIOSingleStepByteToMessageProcessor<FrameDecoder> {
        NIOSingleStepByteToMessageProcessor(
            // Compressed payloads of incompressible data can come out a few bytes longer than the original
            // (deflate's stored blocks and sync flush): allow 1 KiB over the maximum DATA size.
            FrameDecoder(maximumPayloadLength: max(configuration.mux.maximumDataPayload + 1024, 4096)),
            maximumBufferSize: configuration.mux.maximumDataPayload + 64 * 1024
        )
    }

    /// Starts the handshake (the client sends HELLO) and the timers.
    func start() {
        self.eventLoop.preconditionInEventLoop()
        guard let transport = self.transport else { return }
        // The client's HELLO comes first, before anything that arrived already is read (a server's refusal may be
        // waiting there).
        if case .client = self.role { self.enqueue(self.handshake.start()) }
        transport.start(delegate: self)
        // What had arrived may have ended the session already (a refusal): then no timer may start, or it would
        // keep the ended session alive.
        guard !self.isEnded else { return }
        if case .client = self.role { self.flushNow() }
        let timeout = self.configuration.handshakeTimeout
        self.handshakeTimer = self.eventLoop.scheduleTask(in: timeout) { [self] in
            guard !self.handshake.isEstablished else { return }
            self.end(.handshakeTimedOut(seconds: timeout.seconds))
        }
        let shortest = min(self.configuration.keepaliveInterval, self.configuration.keepaliveTimeout)
        let tick = TimeAmount.nanoseconds(max(100_000_000, shortest.nanoseconds / 4))
        self.keepaliveTask = self.eventLoop.scheduleRepeatedTask(initialDelay: tick, delay: tick) { [self] _ in
            self.keepaliveTick()
        }
    }

    // MARK: Streams opened by this side (client forwarding)

    /// Opens a stream to `target` for an accepted local connection. Returns false (and the caller closes the
    /// connection) when the session cannot take a stream now.
    func openStream(channel: any Channel, handler: StreamChannelHandler, target: TargetAddress) -> Bool {
        self.eventLoop.preconditionInEventLoop()
        // The multiplexer is mutated in place through `self.mux!` throughout: copying it out would copy its stream
        // table on the next mutation.
        guard !self.isEnded, !self.goingAway, self.mux != nil else {
            self.logger.warning("refusing local connection for \(target): the tunnel session is not accepting streams")
            return false
        }
        let opened: (StreamID, Frame)
        do {
            opened = try self.mux!.openStream(to: target)
        } catch {
            self.logger.warning("refusing local connection for \(target): \(error)")
            return false
        }
        let (id, frame) = opened
        handler.streamID = id
        self.endpoints[id] = StreamEndpoint(id: id, channel: channel, target: target)
        self.statistics.streamsOpened += 1
        self.logger.debug("stream \(id): opening to \(target)")
        self.enqueue(frame)
        return true
    }

    // MARK: Streams opened by the peer (server forwarding)

    /// The target of stream `id` is connected on `channel` (which must be on this session's loop).
    func targetConnected(_ id: StreamID, channel: any Channel, target: TargetAddress) {
        self.eventLoop.preconditionInEventLoop()
        guard !self.isEnded, let frame = self.mux?.acceptSucceeded(id) else {
            // The stream was reset (or the session ended) while connecting.
            channel.close(promise: nil)
            return
        }
        let endpoint = StreamEndpoint(id: id, channel: channel, target: target)
        self.endpoints[id] = endpoint
        self.statistics.streamsOpened += 1
        self.logger.debug("stream \(id): connected to \(target)")
        self.enqueue(frame)
        self.readIfAllowed(endpoint)
    }

    /// The target of stream `id` could not be reached.
    func targetFailed(_ id: StreamID, reason: OpenFailReason, message: String) {
        self.eventLoop.preconditionInEventLoop()
        guard !self.isEnded, let frame = self.mux?.acceptFailed(id, reason: reason, message: message) else { return }
        self.statistics.streamsRefused += 1
        self.enqueue(frame)
    }

    // MARK: Events from stream sockets

    func localRead(_ id: StreamID, _ buffer: ByteBuffer) {
        guard let endpoint = self.endpoints[id] else { return }
        if endpoint.pendingSend == nil {
            endpoint.pendingSend = buffer
        } else {
            var incoming = buffer
            endpoint.pendingSend!.writeBuffer(&incoming)
        }
        self.pump(endpoint)
    }

    func localReadComplete(_ id: StreamID) {
        guard let endpoint = self.endpoints[id] else { return }
        self.readIfAllowed(endpoint)
    }

    func localInputClosed(_ id: StreamID) {
        self.logger.trace("stream \(id): local EOF")
        guard let endpoint = self.endpoints[id] else { return }
        endpoint.finPending = true
        if endpoint.pendingSend == nil { self.sendFin(endpoint) }
    }

    /// The socket closed. A clean EOF after this side shut the socket's output closes the channel without an
    /// `inputClosed` event, so that case is a FIN; anything else before the stream finished is an abort.
    func localClosed(_ id: StreamID, afterError: Bool) {
        guard let endpoint = self.endpoints[id] else { return }
        if !afterError && endpoint.shutdownOutputWhenDrained && endpoint.outstandingWrites == 0 {
            self.localInputClosed(id)
            return
        }
        self.endpoints.removeValue(forKey: id)
        // A socket that failed (a TCP reset, above all) is carried as RST `connection reset`, so that the other side
        // resets its socket too: a truncated transfer must never reach an application as a clean end.
        let (code, message): (ResetCode, String) =
            afterError
            ? (.connectionReset, self.role == .server ? "the target reset the connection" : "the local connection was reset")
            : (.cancelled, "the local connection closed")
        if let frame = self.mux?.localReset(id, code: code, message: message) {
            self.logger.debug("stream \(id): \(message) before the stream finished; resetting")
            self.statistics.streamsReset += 1
            self.enqueue(frame)
        }
    }

    // MARK: Shutdown

    /// Ends the session gracefully: GOAWAY, no new streams, open streams finish; after `gracePeriod` whatever is
    /// left is closed.
    public func shutdown(gracePeriod: TimeAmount) -> EventLoopFuture<SessionError> {
        self.eventLoop.execute { [self] in
            guard !self.isEnded else { return }
            guard self.mux != nil else {
                self.end(.shutdown)
                return
            }
            if !self.goingAway {
                self.goingAway = true
                self.mux?.beginGoingAway()
                self.enqueue(.goAway(code: .normal, message: "shutting down"))
                self.flushNow()
            }
            self.endIfDrained()
            self.eventLoop.scheduleTask(in: gracePeriod) { [self] in self.end(.shutdown) }
        }
        return self.ended
    }

    /// Server: refuses this connection's session before its handshake, with a GOAWAY that the client reports as the
    /// reason (too many sessions; too many failed authentications from its address). Nothing the client sends is
    /// read; the session ends when the client has closed the connection, or after two seconds.
    func refuse(_ code: GoAwayCode, _ message: String) {
        self.eventLoop.preconditionInEventLoop()
        guard !self.isEnded, self.refusal == nil else { return }
        self.refusal = (code, message)
        self.handshakeTimer?.cancel()
        self.encoder.encode(.goAway(code: code, message: message), into: &self.outbound)
        self.flushNow()
        self.eventLoop.scheduleTask(in: .seconds(2)) { [self] in self.end(.refused(code, message)) }
    }

    /// Ends the session at once.
    public func close(_ reason: SessionError = .shutdown) {
        self.eventLoop.execute { [self] in self.end(reason) }
    }

    // MARK: TransportConnectionDelegate

    public func transport(_ transport: any TransportConnection, didReceive message: ByteBuffer) {
        guard !self.isEnded, self.refusal == nil, transport === self.transport else { return }
        self.keepalive.receivedAnything(now: .now())
        do {
            try self.decoder.process(buffer: message) { frame in
                if !self.isEnded { self.handle(frame) }
            }
        } catch let error as FrameDecodingError {
            self.protocolFailure(error.goAwayCode, error.description)
        } catch {
            self.protocolFailure(.protocolError, "\(error)")
        }
    }

    public func transportDidReadComplete(_ transport: any TransportConnection) {
        guard !self.isEnded else { return }
        for endpoint in self.unflushedEndpoints where endpoint.needsFlush {
            endpoint.needsFlush = false
            endpoint.channel.flush()
        }
        self.unflushedEndpoints.removeAll(keepingCapacity: true)
        if self.sequencer.ackDueNow {
            self.scheduleFlush()
        } else if self.sequencer.hasUnacknowledged && self.ackTimer == nil {
            self.ackTimer = self.eventLoop.scheduleTask(in: self.configuration.ackDelay) { [self] in
                self.ackTimer = nil
                if self.sequencer.hasUnacknowledged { self.flushNow() }
            }
        }
    }

    public func transportWritabilityChanged(_ transport: any TransportConnection) {
        self.logger.trace("transport writable: \(transport.isWritable)")
        if transport.isWritable { self.resumeReads() }
    }

    public func transportDidClose(_ transport: any TransportConnection, error: (any Error)?) {
        guard transport === self.transport else { return }
        let reason = error.map { "\($0)" } ?? "closed by the peer or a proxy in between"
        self.transportLost(.transportClosed(reason))
    }

    // MARK: Resumption

    /// The transport is gone: an established session that may be resumed waits for a new one, streams open;
    /// anything else ends.
    private func transportLost(_ reason: SessionError) {
        guard !self.isEnded else { return }
        guard self.configuration.resumption, self.mux != nil, !self.sessionID.isEmpty, !self.goingAway else {
            self.end(reason)
            return
        }
        self.transport = nil
        self.resuming = false
        self.isDetached = true
        self.handshakeTimer?.cancel()
        self.decoder = Self.makeDecoder(self.configuration)
        self.logger.info("tunnel connection lost (\(reason)); streams stay open while the session waits to be resumed")
        if self.role == .server {
            let grace = self.configuration.detachedGracePeriod
            self.detachTimer?.cancel()
            self.detachTimer = self.eventLoop.scheduleTask(in: grace) { [self] in
                guard self.isDetached else { return }
                self.logger.info("not resumed within \(grace.seconds) s: closing its \(self.endpoints.count) streams")
                self.end(.detachedExpired(seconds: grace.seconds))
            }
        }
        self.onDetached?(self, reason)
    }

    /// Closes the transport on purpose (to move the session to another one): the session detaches as if the
    /// connection had dropped, and is resumed on the next.
    func dropTransport() {
        self.eventLoop.preconditionInEventLoop()
        guard let transport = self.transport, !self.isEnded else { return }
        self.transportLost(.transportClosed("moved to another transport"))
        transport.close()
    }

    /// Client: resumes the detached session on `transport` (dialled on this session's loop).
    func resume(on transport: any TransportConnection) {
        self.eventLoop.preconditionInEventLoop()
        guard self.isDetached, !self.isEnded else {
            transport.close()
            return
        }
        self.handshake = HandshakeStateMachine(
            role: .resumingClient(sessionID: self.sessionID, sessionKey: self.sessionKey, received: self.sequencer.received),
            capabilities: self.compressionEnabled ? [.compression] : [],
            maximumDataPayload: UInt32(self.configuration.mux.maximumDataPayload)
        )
        // The HELLO is made before the transport delivers anything: a refusal already waiting on the new
        // connection (a GOAWAY the server sent the moment it saw it) must meet a handshake that has started.
        let hello = self.handshake.start()
        self.beginResumption(on: transport)
        guard !self.isEnded, self.resuming, self.transport === transport else { return }
        self.sendHandshakeFrame(hello)
    }

    /// Server: takes over `transport`, on which a client has just proven (with this session's key) that it
    /// resumes this session. A connection the session still holds (the client saw it fail first) is closed, the
    /// WELCOME goes out with what this side has received, then what the client missed.
    func adopt(_ transport: any TransportConnection, outcome: HandshakeStateMachine.Outcome, welcome: Frame?) {
        self.eventLoop.preconditionInEventLoop()
        guard !self.isEnded else {
            transport.close()
            return
        }
        if let old = self.transport {
            self.transport = nil
            old.close()
        }
        self.detachTimer?.cancel()
        self.transport = transport
        self.decoder = Self.makeDecoder(self.configuration)
        transport.start(delegate: self)
        guard !self.isEnded, self.transport === transport else { return }
        if case .welcome(var reply)? = welcome {
            reply.received = self.sequencer.received
            self.sendHandshakeFrame(.welcome(reply))
        }
        self.completeResumption(outcome, reply: nil)
    }

    /// Client: runs the resumption handshake on `transport`.
    private func beginResumption(on transport: any TransportConnection) {
        self.transport = transport
        self.resuming = true
        self.decoder = Self.makeDecoder(self.configuration)
        transport.start(delegate: self)
        let timeout = self.configuration.handshakeTimeout
        self.handshakeTimer?.cancel()
        self.handshakeTimer = self.eventLoop.scheduleTask(in: timeout) { [self] in
            guard self.resuming, let transport = self.transport else { return }
            self.logger.warning("no answer to the resumption within \(timeout.seconds) s")
            transport.close()
        }
    }

    /// Sends a handshake frame at once, ahead of the stream frames waiting in the batch (during a resumption the
    /// batch holds frames for after it).
    private func sendHandshakeFrame(_ frame: Frame) {
        guard let transport = self.transport else { return }
        var buffer = ByteBufferAllocator().buffer(capacity: 128)
        self.encoder.encode(frame, into: &buffer)
        transport.send(buffer)
    }

    /// The resumption handshake finished: send the peer what it missed, then what waited, and carry on.
    private func completeResumption(_ outcome: HandshakeStateMachine.Outcome, reply: Frame?) {
        guard let transport = self.transport else { return }
        // The client signs every request from here on (nothing may go out unsigned after the WELCOME); the
        // server lifts its limits once its WELCOME is out, below.
        if self.role == .client { transport.sessionAuthenticated(key: self.sessionKey) }
        self.resuming = false
        self.isDetached = false
        self.handshakeTimer?.cancel()
        self.detachTimer?.cancel()
        self.keepalive = KeepaliveStateMachine(
            interval: self.configuration.keepaliveInterval, timeout: self.configuration.keepaliveTimeout, now: .now()
        )
        let replay: [ByteBuffer]
        do {
            replay = try self.sequencer.framesToReplay(peerReceived: outcome.peerReceived)
        } catch {
            self.protocolFailure(.protocolError, "resumption: \(error)")
            return
        }
        if let reply { self.sendHandshakeFrame(reply) }
        var batch = ByteBufferAllocator().buffer(capacity: replay.reduce(0) { $0 + $1.readableBytes })
        for frame in replay { batch.writeImmutableBuffer(frame) }
        if batch.readableBytes > 0 { transport.send(batch) }
        self.resumptions += 1
        self.logger.info("session resumed over \(transport.kind) (\(replay.count) frames sent again)")
        self.flushNow()
        if self.role == .server { transport.sessionAuthenticated(key: self.sessionKey) }
        self.resumeReads()
        self.onResumed?(self)
    }

    // MARK: Frame handling

    private func handle(_ frame: Frame) {
        guard self.mux != nil, !self.resuming else {
            self.handleHandshake(frame)
            return
        }
        if frame.type.isReliable {
            self.sequencer.recordReceived(byteCount: frame.wireSize)
            self.handleStreamFrame(frame)
            return
        }
        switch frame {
        case .ack(let received):
            do {
                try self.sequencer.receiveAck(received)
            } catch {
                self.protocolFailure(.protocolError, error.description)
                return
            }
            if self.sequencer.replayBytes < self.configuration.mux.sessionMemoryLimit / 2 { self.resumeReads() }
        case .ping(let value):
            self.enqueue(.pong(value))
        case .pong(let value):
            self.keepalive.receivedPong(value, now: .now())
        case .goAway(let code, let message):
            if code == .normal {
                self.logger.info("peer is shutting down: open streams finish, new ones are refused")
                self.goingAway = true
                self.mux?.beginGoingAway()
                self.endIfDrained()
            } else {
                self.logger.error("peer ended the session: \(code): \(message)")
                self.end(.peerWentAway(code, message))
            }
        default:
            self.protocolFailure(.protocolError, "\(frame.type) frame after the handshake")
        }
    }

    private func handleHandshake(_ frame: Frame) {
        if case .server = self.role, self.resumeTarget == nil, case .hello(let hello) = frame,
            !hello.resumeSessionID.isEmpty, let target = self.resumeLookup?(hello.resumeSessionID)
        {
            // Checked on this connection with the named session's key: that session is not touched unless the
            // client's AUTH proves it holds the key.
            self.resumeTarget = target
            self.handshake = HandshakeStateMachine(
                role: .resumingServer(sessionID: hello.resumeSessionID, sessionKey: target.key, received: 0),
                capabilities: target.capabilities,
                maximumDataPayload: UInt32(self.configuration.mux.maximumDataPayload)
            )
        }
        if let target = self.resumeTarget {
            self.handleResumptionOnServer(frame, target: target)
            return
        }
        if self.resuming {
            switch self.handshake.receive(frame) {
            case .send(let reply):
                self.sendHandshakeFrame(reply)
            case .established(let outcome, let reply):
                self.completeResumption(outcome, reply: reply)
            case .fail(.refusedByPeer(let code, let message), _) where code == .overloaded || code == .throttled:
                // The server is busy, not refusing the session: it keeps it; wait and try again.
                self.logger.warning("the server cannot resume the session now (\(message)); trying again")
                let refused = self.transport
                self.transportLost(.handshake(.refusedByPeer(code, message)))
                refused?.close()
            case .fail(let error, let reply):
                if let reply { self.sendHandshakeFrame(reply) }
                self.logger.warning("resumption failed: \(error)")
                self.end(.handshake(error))
            }
            return
        }
        switch self.handshake.receive(frame) {
        case .send(let reply):
            self.enqueue(reply)
            self.flushNow()
        case .established(let outcome, let reply):
            self.sessionID = outcome.sessionID
            self.sessionKey = outcome.sessionKey
            if self.role == .client { self.transport?.sessionAuthenticated(key: outcome.sessionKey) }
            if let reply { self.enqueue(reply) }
            self.handshakeTimer?.cancel()
            self.mux = MuxStateMachine(
                role: self.role == .client ? .client : .server,
                configuration: self.configuration.mux,
                peerMaximumDataPayload: Int(outcome.peerMaximumDataPayload)
            )
            self.sessionIDString = outcome.sessionIDString
            self.logger[metadataKey: "session"] = "\(self.sessionIDString.prefix(8))"
            self.compressionEnabled = outcome.capabilities.contains(.compression)
            self.logCompressionOutcome()
            self.flushNow()
            if self.role == .server { self.transport?.sessionAuthenticated(key: outcome.sessionKey) }
            self.establishedPromise.succeed(outcome)
        case .fail(let error, let reply):
            if let reply {
                self.enqueue(reply)
                self.flushNow()
            }
            self.end(.handshake(error))
        }
    }

    /// Server: the resumption handshake of `target`, run on this connection. A proof that verifies hands the
    /// connection to `target` (on its loop) and ends this session; one that does not ends only this connection.
    private func handleResumptionOnServer(_ frame: Frame, target: ResumableSession) {
        switch self.handshake.receive(frame) {
        case .send(let reply):
            self.sendHandshakeFrame(reply)
        case .established(let outcome, let welcome):
            guard let transport = self.transport else { return }
            self.transport = nil
            // The connection may live on another loop than the session: bridge it (this also makes the bridge its
            // delegate at once, so nothing it receives from now on reaches this session).
            let adopted: any TransportConnection =
                target.session.eventLoop === transport.eventLoop
                ? transport : LoopBridgedTransport(transport, to: target.session.eventLoop)
            let session = target.session
            session.eventLoop.execute { session.adopt(adopted, outcome: outcome, welcome: welcome) }
            self.end(.handedOver)
        case .fail(let error, let reply):
            if let reply { self.sendHandshakeFrame(reply) }
            self.logger.warning("refused a resumption of session \(target.sessionIDString.prefix(8)): \(error)")
            self.end(.handshake(error))
        }
    }

    private func handleStreamFrame(_ frame: Frame) {
        guard self.mux != nil else { return }
        self.handleMuxAction(self.mux!.receive(frame))
    }

    private func handleMuxAction(_ action: MuxInboundAction) {
        switch action {
        case .openRequested(let id, let target):
            guard let opener = self.targetOpener else {
                self.targetFailed(id, reason: .other, message: "this side does not open targets")
                return
            }
            opener(self, id, target)
        case .opened(let id):
            if let endpoint = self.endpoints[id] {
                self.logger.debug("stream \(id): open to \(endpoint.target)")
                self.pump(endpoint)
                self.readIfAllowed(endpoint)
            }
        case .openFailed(let id, let reason, let message):
            self.statistics.streamsRefused += 1
            if let endpoint = self.dropEndpoint(id) {
                self.logger.warning("server refused target \(endpoint.target): \(reason): \(message)")
            }
        case .deliver(let id, let flags, let payload):
            if flags.contains(.compressed) {
                self.deliverCompressed(id, payload)
            } else {
                self.deliver(id, payload)
            }
        case .creditAvailable(let id):
            self.logger.trace("stream \(id): credit now \(self.mux?.sendableBytes(id) ?? -1)")
            if let endpoint = self.endpoints[id] {
                self.pump(endpoint)
                self.readIfAllowed(endpoint)
            }
        case .remoteFinished(let id, let complete):
            self.logger.trace("stream \(id): FIN received, complete: \(complete)")
            guard let endpoint = self.endpoints[id] else { return }
            if complete {
                self.finishEndpoint(endpoint)
            } else {
                endpoint.shutdownOutputWhenDrained = true
                if endpoint.outstandingWrites == 0 { endpoint.channel.close(mode: .output, promise: nil) }
            }
        case .reset(let id, let code, let message):
            self.statistics.streamsReset += 1
            if let endpoint = self.dropEndpoint(id, abort: true) {
                self.logger.debug("stream \(id) to \(endpoint.target) reset by peer: \(code) \(message)")
            }
        case .reply(let reply, let closeStream, let reason):
            self.logger.warning("\(reason)")
            self.enqueue(reply)
            if let id = closeStream, self.dropEndpoint(id, abort: true) != nil {
                self.statistics.streamsReset += 1
            }
        case .ignore(let reason):
            self.logger.trace("\(reason)")
        case .sessionError(let code, let message):
            self.protocolFailure(code, message)
        }
    }

    private func deliver(_ id: StreamID, _ payload: ByteBuffer) {
        guard let endpoint = self.endpoints[id] else { return }
        let count = payload.readableBytes
        self.statistics.bytesReceived += count
        endpoint.outstandingWrites += 1
        if !endpoint.needsFlush {
            endpoint.needsFlush = true
            self.unflushedEndpoints.append(endpoint)
        }
        endpoint.channel.write(payload).whenComplete { [self] result in
            self.writeCompleted(endpoint, bytes: count, success: (try? result.get()) != nil)
        }
    }

    /// Inflates a compressed DATA payload with the stream's own context, charges the inflated size against the
    /// stream's credit, and delivers it. A payload that inflates past the maximum DATA size (a decompression bomb)
    /// or does not inflate ends this stream only.
    private func deliverCompressed(_ id: StreamID, _ payload: ByteBuffer) {
        guard self.compressionEnabled else {
            self.resetStream(id, .protocolError, "compressed DATA without negotiated compression")
            return
        }
        guard let endpoint = self.endpoints[id] else { return }
        let limit = self.configuration.mux.maximumDataPayload
        var input = payload
        var output = ByteBufferAllocator().buffer(capacity: limit + 1)
        do {
            if endpoint.decompressor == nil {
                endpoint.decompressor = try ZlibDecompressor(algorithm: .deflate, windowSize: 15)
            }
            try endpoint.decompressor!.inflate(from: &input, to: &output)
        } catch let error as CompressNIOError where error == .bufferOverflow {
            self.resetStream(id, .decompressionBomb, "compressed DATA inflates past the \(limit)-byte maximum")
            return
        } catch {
            self.resetStream(id, .protocolError, "compressed DATA does not inflate: \(error)")
            return
        }
        guard input.readableBytes == 0 else {
            self.resetStream(id, .decompressionBomb, "compressed DATA inflates past the \(limit)-byte maximum")
            return
        }
        if let violation = self.mux?.receivedInflated(id, bytes: output.readableBytes) {
            self.handleMuxAction(violation)
            return
        }
        self.deliver(id, output)
    }

    private func writeCompleted(_ endpoint: StreamEndpoint, bytes: Int, success: Bool) {
        endpoint.outstandingWrites -= 1
        guard success, self.endpoints[endpoint.id] === endpoint, self.mux != nil else { return }
        let (frames, complete) = self.mux!.consumed(endpoint.id, bytes: bytes)
        for frame in frames { self.enqueue(frame) }
        if complete {
            self.finishEndpoint(endpoint)
        } else if endpoint.outstandingWrites == 0 && endpoint.shutdownOutputWhenDrained {
            endpoint.channel.close(mode: .output, promise: nil)
        }
    }

    private func resetStream(_ id: StreamID, _ code: ResetCode, _ message: String) {
        self.logger.warning("stream \(id): \(message)")
        if let frame = self.mux?.localReset(id, code: code, message: message) { self.enqueue(frame) }
        if self.dropEndpoint(id, abort: true) != nil { self.statistics.streamsReset += 1 }
    }

    /// Forgets stream `id`'s socket and closes it, with a TCP reset when `abort` (the stream was reset: the
    /// application must not take what it got for the whole); returns it (for logs) if there was one.
    @discardableResult
    private func dropEndpoint(_ id: StreamID, abort: Bool = false) -> StreamEndpoint? {
        guard let endpoint = self.endpoints.removeValue(forKey: id) else { return nil }
        let channel = endpoint.channel
        if abort, let options = channel as? any SocketOptionProvider {
            // SO_LINGER with a zero timeout makes close() send RST instead of FIN.
            options.setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { _ in channel.close(promise: nil) }
        } else {
            channel.close(promise: nil)
        }
        return endpoint
    }

    /// Both directions finished and everything was written: close the socket and forget the stream.
    private func finishEndpoint(_ endpoint: StreamEndpoint) {
        self.endpoints.removeValue(forKey: endpoint.id)
        self.logger.debug("stream \(endpoint.id) to \(endpoint.target) finished")
        endpoint.channel.close(promise: nil)
        self.endIfDrained()
    }

    // MARK: Sending stream data

    /// Frames as much of the endpoint's pending bytes as its credit allows; sends FIN once they are all out.
    private func pump(_ endpoint: StreamEndpoint) {
        guard self.mux != nil else { return }
        while var pending = endpoint.pendingSend {
            let sendable = self.mux!.sendableBytes(endpoint.id)
            guard sendable > 0 else { break }
            let slice = pending.readSlice(length: min(sendable, pending.readableBytes))!
            self.statistics.bytesSent += slice.readableBytes
            let frame = self.makeDataFrame(endpoint, slice)
            endpoint.pendingSend = pending.readableBytes > 0 ? pending : nil
            self.enqueue(frame)
        }
        if endpoint.finPending && endpoint.pendingSend == nil { self.sendFin(endpoint) }
    }

    /// A DATA frame for `slice`, compressed with the stream's own deflate context when compression is on and pays
    /// for this stream's data. Once bytes went through the compressor they must go out compressed: the peer's
    /// inflate context has to see every compressed block, in order.
    private func makeDataFrame(_ endpoint: StreamEndpoint, _ slice: ByteBuffer) -> Frame {
        let original = slice.readableBytes
        if self.compressionEnabled, original > 0, !endpoint.compressionFailed,
            endpoint.compressionPolicy.shouldCompress(bytes: original)
        {
            do {
                if endpoint.compressor == nil {
                    let settings = self.configuration.compression
                    endpoint.compressor = try ZlibCompressor(
                        algorithm: .deflate,
                        configuration: ZlibConfiguration(
                            windowSize: settings.windowBits,
                            compressionLevel: settings.level,
                            memoryLevel: settings.memoryLevel
                        )
                    )
                }
                var input = slice
                let compressed = try input.compressStream(with: endpoint.compressor!, flush: .sync)
                endpoint.compressionPolicy.record(original: original, compressed: compressed.readableBytes)
                self.statistics.compressedFramesSent += 1
                self.statistics.payloadBytesOnWireSent += compressed.readableBytes
                return self.mux!.sendData(endpoint.id, payload: compressed, flags: .compressed, originalBytes: original)
            } catch {
                // zlib failing here (out of memory) leaves the context unusable: stop compressing this stream.
                self.logger.error("stream \(endpoint.id): compression failed (\(error)); sending it uncompressed")
                endpoint.compressionFailed = true
                endpoint.compressor = nil
            }
        }
        self.statistics.rawFramesSent += 1
        self.statistics.payloadBytesOnWireSent += original
        return self.mux!.sendData(endpoint.id, payload: slice)
    }

    private func logCompressionOutcome() {
        switch (self.role, self.configuration.compression.enabled, self.compressionEnabled) {
        case (_, _, true):
            self.logger.info("compression on: zlib level \(self.configuration.compression.level), one context per stream")
        case (.client, true, false):
            self.logger.warning("compression off: the server does not agree to it (started with --no-compress)")
        case (.server, false, _):
            self.logger.info("compression off: this server runs with --no-compress")
        default:
            self.logger.info("compression off: not requested")
        }
    }

    private func sendFin(_ endpoint: StreamEndpoint) {
        endpoint.finPending = false
        guard let (frame, complete) = self.mux?.localFinished(endpoint.id) else { return }
        self.enqueue(frame)
        if complete { self.finishEndpoint(endpoint) }
    }

    private func canRead(_ endpoint: StreamEndpoint) -> Bool {
        guard self.mux != nil, !self.resuming, let transport = self.transport else { return false }
        return endpoint.pendingSend == nil && !endpoint.finPending && self.mux!.sendableBytes(endpoint.id) > 0
            && transport.isWritable && self.sequencer.replayBytes < self.configuration.mux.sessionMemoryLimit
    }

    /// Whether stream `id` may read its local socket now (asked by the stream's handler for every read).
    func mayReadLocally(_ id: StreamID) -> Bool {
        guard let endpoint = self.endpoints[id] else { return false }
        return self.canRead(endpoint)
    }

    private func readIfAllowed(_ endpoint: StreamEndpoint) {
        if self.canRead(endpoint) {
            endpoint.channel.read()
        } else {
            self.logger.trace(
                "stream \(endpoint.id): not reading (pending \(endpoint.pendingSend?.readableBytes ?? 0), credit \(self.mux?.sendableBytes(endpoint.id) ?? -1), writable \(self.transport?.isWritable ?? false), replay \(self.sequencer.replayBytes))"
            )
        }
    }

    private func resumeReads() {
        for endpoint in self.endpoints.values { self.readIfAllowed(endpoint) }
    }

    // MARK: Output

    private func enqueue(_ frame: Frame) {
        let start = self.outbound.writerIndex
        self.encoder.encode(frame, into: &self.outbound)
        if frame.type.isReliable {
            self.unsentReliableFrames.append((start, self.outbound.writerIndex - start))
        }
        if self.outbound.readableBytes >= self.configuration.maximumBatchSize {
            self.flushNow()
        } else {
            self.scheduleFlush()
        }
    }

    private func scheduleFlush() {
        guard !self.flushScheduled else { return }
        self.flushScheduled = true
        self.eventLoop.execute { [self] in self.flushNow() }
    }

    private func flushNow() {
        self.flushScheduled = false
        guard self.transport != nil, !self.resuming else { return }
        if self.mux != nil && self.sequencer.hasUnacknowledged && !self.isEnded {
            // The ACK timer, if scheduled, is left to fire: it finds nothing to acknowledge, which is cheaper than
            // cancelling and rescheduling it for every batch.
            self.encoder.encode(self.sequencer.makeAck(), into: &self.outbound)
        }
        guard self.outbound.readableBytes > 0, let transport = self.transport else { return }
        for (start, length) in self.unsentReliableFrames {
            self.sequencer.recordSent(self.outbound.getSlice(at: start, length: length)!)
        }
        self.unsentReliableFrames.removeAll(keepingCapacity: true)
        transport.send(self.outbound)
        self.statistics.transportMessagesSent += 1
        self.outbound = Self.makeOutboundBuffer()
    }

    /// A batch buffer: room for two full DATA frames, below malloc's mmap threshold so that it is reused cheaply.
    private static func makeOutboundBuffer() -> ByteBuffer {
        ByteBufferAllocator().buffer(capacity: 66 * 1024)
    }

    // MARK: Ending

    private func keepaliveTick() {
        guard !self.isEnded, self.transport != nil, !self.resuming else { return }
        switch self.keepalive.tick(now: .now()) {
        case .none:
            break
        case .sendPing(let id):
            guard self.mux != nil else { return }
            self.enqueue(.ping(id))
            self.flushNow()
        case .declareDead(let silentFor):
            self.logger.error("no keepalive answer; declaring the tunnel connection dead")
            let dead = self.transport
            self.transportLost(.keepaliveTimeout(seconds: silentFor.seconds))
            dead?.close()
        }
    }

    private func protocolFailure(_ code: GoAwayCode, _ message: String) {
        guard !self.isEnded else { return }
        self.logger.error("protocol error: \(message); ending the session")
        self.outbound.clear()
        self.unsentReliableFrames.removeAll()
        self.encoder.encode(.goAway(code: code, message: message), into: &self.outbound)
        self.flushNow()
        self.end(.protocolViolation(code, message))
    }

    private func endIfDrained() {
        if self.goingAway && self.endpoints.isEmpty && !self.isEnded {
            self.flushNow()
            self.end(.shutdown)
        }
    }

    private func end(_ reason: SessionError) {
        guard !self.isEnded else { return }
        self.isEnded = true
        self.handshakeTimer?.cancel()
        self.detachTimer?.cancel()
        self.ackTimer?.cancel()
        self.keepaliveTask?.cancel()
        for endpoint in self.endpoints.values { endpoint.channel.close(promise: nil) }
        self.endpoints.removeAll()
        self.transport?.close()
        self.transport = nil
        // The owners' callbacks capture their owners (a client holds its session): let go of them, or an ended
        // session and its client would keep each other alive.
        self.targetOpener = nil
        self.onDetached = nil
        self.onResumed = nil
        self.resumeLookup = nil
        self.resumeTarget = nil
        self.establishedPromise.fail(reason)
        self.endedPromise.succeed(reason)
    }
}

extension Frame {
    /// Encoded size in bytes (exact for DATA, close enough for the rest, which only feeds ACK pacing).
    var wireSize: Int {
        if case .data(_, _, let payload) = self { return FrameEncoder.headerLength + payload.readableBytes }
        return FrameEncoder.headerLength + 16
    }
}
