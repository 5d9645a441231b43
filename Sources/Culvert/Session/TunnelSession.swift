import CompressNIO
public import CulvertCore
public import CulvertTransport
import Logging
public import NIOCore

/// One tunnel session on one event loop: a thin driver of ``SessionStateMachine`` that moves its frames over a
/// ``TransportConnection`` and its streams' bytes to and from their sockets (``StreamChannelHandler``).
///
/// What the protocol decides (handshake, detach, resume, going away, keepalive, flow control) is the state
/// machine's; this class does the I/O it asks for: batching frames into transport messages, flushing at the end of
/// each read (as nio-http2 does), zlib per stream, timers. A session and all its stream sockets live on one event
/// loop, so the data path takes no locks and makes no thread hops. Every method must be called on ``eventLoop``;
/// code on other threads goes through a ``SessionHandle``.
public final class TunnelSession: TransportConnectionDelegate {
    // Not Sendable: everything of it is confined to `eventLoop`, and owners on other threads hold a
    // ``SessionHandle``, which runs what touches the session there.

    public enum Role: Sendable {
        case client
        case server
    }

    public let role: Role
    public let eventLoop: any EventLoop
    public let configuration: SessionConfiguration
    private(set) var logger: Logger

    private var machine: SessionStateMachine
    private(set) var transport: (any TransportConnection)?
    /// The error the current transport closed with, when it said one.
    private var transportCloseError: TransportError?
    private var frameReader: FrameReader
    private let encoder = FrameEncoder()
    /// Seals what this side sends and opens what it receives on the current transport, once its handshake is done
    /// (nil before, while detached, and with end-to-end protection off).
    private var cipher: SessionCipher?
    /// Opens the SEALED frames off the transport and reads the frames each holds.
    private var sealedFrames: SealedFrameReader
    /// The frames for the next transport message.
    private var batch = OutboundBatch()
    /// A read of the transport is under way: what it queues goes out at its read-complete (as nio-http2 flushes at
    /// `channelReadComplete`). Stream sockets' reads queue a flush for the end of the loop tick instead, so that
    /// many streams reading at once share one transport message.
    private var flushAtReadComplete = false
    private var flushScheduled = false
    private var streams: [StreamID: StreamChannelHandler] = [:]
    /// Streams written to in this read, flushed together at its end.
    private var unflushedStreams: [StreamChannelHandler] = []
    /// Streams that stopped reading because the session could not send (transport full, replay buffer full,
    /// detached): read again when that changes. Streams short of their own credit are woken by their WINDOW.
    private var waitingForRoom: [StreamChannelHandler] = []
    private var timers: [SessionStateMachine.Timer: Scheduled<Void>] = [:]
    private var ackTimer: Scheduled<Void>?
    private var keepaliveTask: Scheduled<Void>?
    /// The session's resources (sockets, timers, callbacks) have been released.
    private var finished = false
    /// Going away with no stream left, the session waits for the peer to acknowledge what it sent before it closes
    /// the transport (see ``endIfDrained()``).
    private var endsWhenAcknowledged = false
    private let establishedPromise: EventLoopPromise<HandshakeStateMachine.Outcome>
    private let endedPromise: EventLoopPromise<SessionError>

    /// Server: opens the targets of streams the peer asks for; without one every OPEN is refused.
    var connector: (any StreamConnector)?
    /// Server: the client asks for a reverse listener (`-R`); answer with ``answerListen(_:_:)``. Without one every
    /// request is refused.
    var onListenRequested: ((TunnelSession, UInt32, TargetAddress) -> Void)?
    /// Client: the server's answer to ``requestListen(_:on:)``: the bound port, or why not.
    var onListenAnswered: ((UInt32, Result<Int, StreamOpenFailure>) -> Void)?
    /// Client: the transport was lost and the session waits, streams open, for ``resume(on:)``.
    var onDetached: ((TunnelSession, SessionError) -> Void)?
    /// Client: the session was resumed on a new transport connection.
    var onResumed: ((TunnelSession) -> Void)?
    /// The peer sent GOAWAY: this session's open streams finish, and new ones must go elsewhere (a client opens a
    /// new session for them at once).
    var onPeerGoingAway: ((TunnelSession) -> Void)?
    /// The transport's upstream moved to short requests (``upstreamUsesShortRequests``).
    var onUpstreamModeChange: (() -> Void)?
    /// A stream was forgotten (``streamCount`` went down).
    var onStreamRemoved: (() -> Void)?
    /// Server: asked once, when the first message arrives (before its frames are read), whether to hear this
    /// connection at all; a code and message refuse it with GOAWAY (the authentication throttle counts attempts here).
    var admitFirstMessage: (() -> (GoAwayCode, String)?)?
    /// Server: the live session a HELLO on this (new) connection names, if this server has it. The resumption's
    /// proof is checked here, on the new connection, with that session's key; only a proof that verifies hands the
    /// connection to that session, so a stranger who saw its id cannot touch it.
    var resumeLookup: (([UInt8]) -> ResumableSession?)?
    /// Server: the session this connection's HELLO asked to resume, while its proof is checked.
    private var resumeTarget: ResumableSession?

    /// The session's counters so far. On its loop; other threads read ``SessionHandle/snapshot()``.
    private(set) var statistics = SessionStatistics()
    /// The session id, once established (hex).
    private(set) var sessionIDString = ""
    /// The named user the client authenticated as, once established; nil for the shared token.
    private(set) var user: String?
    /// Client: the cookies of the session's HTTP requests (a balancer's stickiness), sent again on every connection
    /// it resumes on.
    var cookies: SessionCookieJar?
    /// The body shape its chunked and polling connections settled on, for the ones it resumes on (a client's).
    var bodyShapeMemory: BodyShapeMemory?
    /// The transport this session is counted under in `culvert_sessions_open`, once established (metrics only).
    private var metricsTransport: TransportKind?
    /// Stream bytes already reported to the metrics, each way.
    private var reportedBytes = (sent: 0, received: 0)
    /// When the transport was lost: a resumption reports how long data stopped.
    private var detachedAt: NIODeadline?
    private var metrics: TunnelMetrics? { self.configuration.metrics }
    /// The session id, once established (empty before).
    var sessionID: [UInt8] { self.machine.sessionID ?? [] }
    /// Succeeds when the handshake completes; fails with ``SessionError`` when it does not.
    public var established: EventLoopFuture<HandshakeStateMachine.Outcome> { self.establishedPromise.futureResult }
    /// Succeeds, with the reason, when the session has ended.
    public var ended: EventLoopFuture<SessionError> { self.endedPromise.futureResult }
    /// The transport that carries the session.
    var transportKind: TransportKind? { self.transport?.kind }
    /// Streams currently open.
    var streamCount: Int { self.streams.count }
    /// The transport was lost; the session waits to be resumed.
    var isDetached: Bool { self.machine.isDetached }
    /// Whether a stream could be opened on it now (it is not going away or ended).
    var acceptsNewStreamsNow: Bool { self.machine.acceptsNewStreams && !self.finished }
    /// Times the session was resumed on a new transport connection.
    var resumptions: Int { self.machine.resumptions }
    /// Both sides agreed on compression in the handshake.
    var compressionEnabled: Bool { self.machine.compressionEnabled }

    /// What ``SessionHandle/snapshot()`` reads: how owners and tests on other threads see the session (its live
    /// state is its loop's alone). On the session's loop.
    var currentSnapshot: SessionSnapshot {
        self.eventLoop.preconditionInEventLoop()
        return SessionSnapshot(
            statistics: self.statistics, resumptions: self.resumptions, transportKind: self.transportKind,
            streamCount: self.streamCount, isDetached: self.isDetached, compressionEnabled: self.compressionEnabled,
            sessionIDString: self.sessionIDString, user: self.user, roundTrip: self.roundTrip,
            upstreamUsesShortRequests: self.transport?.upstreamUsesShortRequests ?? false,
            bodyShape: self.transport?.bodyShape, bodyByteLimit: self.transport?.bodyByteLimit
        )
    }

    init(role: Role, transport: any TransportConnection, configuration: SessionConfiguration, logger: Logger) {
        self.role = role
        self.eventLoop = transport.eventLoop
        self.configuration = configuration
        self.logger = logger
        self.transport = transport
        self.machine = SessionStateMachine(
            role: role == .client ? .client : .server,
            settings: Self.machineSettings(configuration),
            now: transport.eventLoop.now
        )
        self.frameReader = Self.makeFrameReader(configuration)
        self.sealedFrames = SealedFrameReader(maximumPayloadLength: Self.maximumPayloadLength(configuration))
        self.establishedPromise = transport.eventLoop.makePromise()
        self.endedPromise = transport.eventLoop.makePromise()
    }

    /// The protocol's settings from the session's configuration.
    private static func machineSettings(_ configuration: SessionConfiguration) -> SessionStateMachine.Settings {
        var settings = SessionStateMachine.Settings(
            token: configuration.token,
            authenticationRequired: configuration.authenticationRequired,
            user: configuration.user,
            users: configuration.users,
            compression: configuration.compression.enabled,
            mux: configuration.mux,
            handshakeTimeout: configuration.handshakeTimeout,
            keepaliveInterval: configuration.keepaliveInterval,
            keepaliveTimeout: configuration.keepaliveTimeout,
            resumption: configuration.resumption,
            detachedGracePeriod: configuration.detachedGracePeriod
        )
        settings.isProbe = configuration.isProbe
        settings.sealing = configuration.sealing
        settings.refusesNewSession = configuration.refusesNewSession
        return settings
    }

    private static func makeFrameReader(_ configuration: SessionConfiguration) -> FrameReader {
        FrameReader(maximumPayloadLength: Self.maximumPayloadLength(configuration))
    }

    /// The longest frame payload accepted. Compressed payloads of incompressible data can come out a few bytes
    /// longer than the original (deflate's stored blocks and sync flush): 1 KiB over the maximum DATA size.
    private static func maximumPayloadLength(_ configuration: SessionConfiguration) -> Int {
        max(configuration.mux.maximumDataPayload + 1024, 4096)
    }

    /// Starts the handshake (the client sends HELLO) and the timers.
    func start() {
        self.eventLoop.preconditionInEventLoop()
        guard let transport = self.transport else { return }
        // The client's HELLO comes first, before anything that arrived already is read (a server's refusal may be
        // waiting there).
        if let hello = self.machine.start() { self.enqueue(hello) }
        self.followUpstreamMode(of: transport)
        transport.start(delegate: self)
        // What had arrived may have ended the session already (a refusal): then no timer may start, or it would
        // keep the ended session alive.
        guard !self.finished else { return }
        if case .client = self.role { self.flushNow() }
        self.schedule(.handshake, in: self.configuration.handshakeTimeout)
        let shortest = min(self.configuration.keepaliveInterval, self.configuration.keepaliveTimeout)
        self.scheduleKeepaliveTick(in: .nanoseconds(max(100_000_000, shortest.nanoseconds / 4)))
    }

    /// Tells the machine the time every `tick`, for keepalive, until the session ends. (NIO's repeated task takes
    /// only a `Sendable` closure; this one stays on the loop.)
    private func scheduleKeepaliveTick(in tick: TimeAmount) {
        self.keepaliveTask = self.eventLoop.assumeIsolated().scheduleTask(in: tick) { [self] in
            guard !self.finished else { return }
            if self.transport != nil { self.perform(self.machine.keepaliveTick(now: self.eventLoop.now)) }
            if !self.finished { self.scheduleKeepaliveTick(in: tick) }
        }
    }

    // MARK: Streams opened by this side (listeners)

    /// Carries `channel`, a connection a listener accepted (on this loop), as a new stream to `target`.
    /// `completion` learns whether the peer opened the target, so that the listener can answer its own client.
    /// When the session cannot take a stream now, it closes the channel and says why.
    func carry(_ channel: any Channel, to target: TargetAddress, completion: @escaping (StreamOpenResult) -> Void) {
        self.eventLoop.preconditionInEventLoop()
        let opened: (StreamID, Frame)?
        do {
            opened = self.machine.acceptsNewStreams && !self.finished
                ? try self.machine.withEstablished { try $0.mux.openStream(to: target) } : nil
        } catch {
            self.logger.warning("refusing local connection for \(target): \(error)")
            channel.close(promise: nil)
            completion(.unavailable("\(error)"))
            return
        }
        guard let (id, frame) = opened else {
            self.logger.warning("refusing local connection for \(target): the tunnel session is not accepting streams")
            channel.close(promise: nil)
            completion(.unavailable("the tunnel session is not accepting streams"))
            return
        }
        let handler = StreamChannelHandler(id: id, target: target, session: self)
        handler.openCompletion = completion
        do {
            try channel.pipeline.syncOperations.addHandler(handler)
        } catch {
            channel.close(promise: nil)
            self.enqueueIfAny(self.machine.withEstablished { $0.mux.localReset(id, code: .cancelled, message: "the local connection closed") } ?? nil)
            completion(.unavailable("the local connection closed"))
            return
        }
        self.streams[id] = handler
        self.metrics?.streamsOpen(1)
        self.statistics.streamsOpened += 1
        self.logger.debug("stream \(id): opening to \(target)")
        self.enqueue(frame)
    }

    // MARK: Streams opened by the peer (connectors)

    private func openRequested(_ id: StreamID, target: TargetAddress) {
        guard let connector = self.connector else {
            self.targetFailed(id, StreamOpenFailure(.other, "this side does not open targets"))
            return
        }
        connector.connect(to: target, on: self.eventLoop, logger: self.logger).hop(to: self.eventLoop).assumeIsolated().whenComplete { [self] result in
            switch result {
            case .success(let channel):
                self.targetConnected(id, channel: channel, target: target)
            case .failure(let failure as StreamOpenFailure):
                self.targetFailed(id, failure)
            case .failure(let error):
                self.targetFailed(id, StreamOpenFailure(.other, "cannot connect to \(target): \(error)"))
            }
        }
    }

    /// The target of stream `id` is connected on `channel` (on this session's loop).
    private func targetConnected(_ id: StreamID, channel: any Channel, target: TargetAddress) {
        guard !self.finished, let frame = self.machine.withEstablished({ $0.mux.acceptSucceeded(id) }) ?? nil else {
            // The stream was reset (or the session ended) while connecting.
            channel.close(promise: nil)
            return
        }
        let handler = StreamChannelHandler(id: id, target: target, session: self)
        do {
            try channel.pipeline.syncOperations.addHandler(handler)
        } catch {
            channel.close(promise: nil)
            self.enqueueIfAny(self.machine.withEstablished { $0.mux.localReset(id, code: .cancelled, message: "the target closed") } ?? nil)
            return
        }
        self.streams[id] = handler
        if let metrics = self.metrics {
            metrics.streamsOpen(1)
            metrics.streamOpened(outcome: .ok)
        }
        self.statistics.streamsOpened += 1
        self.logger.debug("stream \(id): connected to \(target)")
        self.enqueue(frame)
        self.readIfAllowed(handler)
    }

    private func targetFailed(_ id: StreamID, _ failure: StreamOpenFailure) {
        guard !self.finished,
            let frame = self.machine.withEstablished({ $0.mux.acceptFailed(id, reason: failure.reason, message: failure.message) }) ?? nil
        else { return }
        self.logger.info("stream \(id): \(failure.message)")
        self.metrics?.streamOpened(outcome: failure.reason == .notAllowed ? .refused : .targetFailed)
        self.statistics.streamsRefused += 1
        self.enqueue(frame)
    }

    // MARK: Events from stream sockets

    func localRead(_ stream: StreamChannelHandler, _ buffer: ByteBuffer) {
        if stream.pendingSend == nil {
            stream.pendingSend = buffer
        } else {
            var incoming = buffer
            stream.pendingSend!.writeBuffer(&incoming)
        }
        self.pump(stream)
    }

    /// What the read queued goes out with the next flush of this loop tick (queued by ``enqueue(_:)``), not now:
    /// streams that read in the same tick share one transport message.
    func localReadComplete(_ stream: StreamChannelHandler) {
        if self.streams[stream.id] === stream { self.readIfAllowed(stream) }
    }

    /// The socket can take writes again: credit the peer for what it held.
    func localWritable(_ stream: StreamChannelHandler) {
        guard stream.uncreditedBytes > 0, self.streams[stream.id] === stream else { return }
        let bytes = stream.uncreditedBytes
        stream.uncreditedBytes = 0
        self.credit(stream, bytes: bytes)
    }

    func localInputClosed(_ stream: StreamChannelHandler) {
        self.logger.trace("stream \(stream.id): local EOF")
        guard self.streams[stream.id] === stream else { return }
        stream.finPending = true
        if stream.pendingSend == nil { self.sendFin(stream) }
    }

    /// The socket closed. A clean EOF after this side shut the socket's output closes the channel without an
    /// `inputClosed` event, so that case is a FIN; anything else before the stream finished is an abort.
    func localClosed(_ stream: StreamChannelHandler, afterError: Bool) {
        guard self.streams[stream.id] === stream else { return }
        if !afterError && stream.outputShutRequested {
            self.localInputClosed(stream)
            return
        }
        self.removeStream(stream, result: .unavailable("the local connection closed"))
        // A socket that failed (a TCP reset, above all) is carried as RST `connection reset`, so that the other side
        // resets its socket too: a truncated transfer must never reach an application as a clean end.
        let (code, message): (ResetCode, String) =
            afterError
            ? (.connectionReset, self.role == .server ? "the target reset the connection" : "the local connection was reset")
            : (.cancelled, "the local connection closed")
        if let frame = self.machine.withEstablished({ $0.mux.localReset(stream.id, code: code, message: message) }) ?? nil {
            self.logger.debug("stream \(stream.id): \(message) before the stream finished; resetting")
            self.statistics.streamsReset += 1
            self.enqueue(frame)
        }
    }

    /// Whether `stream` may read its socket now (asked by its handler for every read).
    func mayReadLocally(_ stream: StreamChannelHandler) -> Bool {
        self.streams[stream.id] === stream && self.canRead(stream)
    }

    // MARK: Shutdown

    /// Ends the session gracefully: GOAWAY, no new streams, open streams finish; after `gracePeriod` whatever is
    /// left is closed. A session that carries no streams now (handshaking, detached) ends at once. On its loop
    /// (elsewhere: ``SessionHandle/shutdown(gracePeriod:)``); it acts from a fresh stack.
    public func shutdown(gracePeriod: TimeAmount) -> EventLoopFuture<SessionError> {
        self.eventLoop.assumeIsolated().execute { [self] in
            guard !self.finished else { return }
            self.perform(self.machine.shutdown())
            guard !self.finished else { return }
            self.endIfDrained()
            self.eventLoop.assumeIsolated().scheduleTask(in: gracePeriod) { [self] in self.end(.shutdown) }
        }
        return self.ended
    }

    /// Server: refuses this connection's session before its handshake, with a GOAWAY that the client reports as the
    /// reason (too many sessions; too many failed authentications from its address). Nothing the client sends is
    /// read; the session ends when the client has closed the connection, or after two seconds.
    func refuse(_ code: GoAwayCode, _ message: String) {
        self.eventLoop.preconditionInEventLoop()
        guard !self.finished, let goAway = self.machine.refuse(code, message) else { return }
        self.timers.removeValue(forKey: .handshake)?.cancel()
        self.countIfGoAway(goAway)
        self.batch.append(goAway)
        self.flushNow()
        self.eventLoop.assumeIsolated().scheduleTask(in: .seconds(2)) { [self] in self.end(.refused(code, message)) }
    }

    /// Ends the session, from a fresh stack. On its loop (elsewhere: ``SessionHandle/close(_:)``).
    public func close(_ reason: SessionError = .shutdown) {
        self.eventLoop.assumeIsolated().execute { [self] in self.end(reason) }
    }

    // MARK: TransportConnectionDelegate

    public func transport(_ transport: any TransportConnection, didReceive message: ByteBuffer) {
        guard !self.finished, transport === self.transport, !self.machine.isRefusing else { return }
        if let admit = self.admitFirstMessage {
            self.admitFirstMessage = nil
            if let (code, reason) = admit() {
                self.refuse(code, reason)
                return
            }
        }
        self.flushAtReadComplete = true
        do {
            try self.frameReader.process(message) { frame in
                if !self.finished { self.receive(frame) }
            }
        } catch let error as FrameDecodingError {
            self.perform(self.machine.decodingFailed(error.goAwayCode, error.description))
        } catch {
            self.perform(self.machine.decodingFailed(.protocolError, "\(error)"))
        }
    }

    public func transportDidReadComplete(_ transport: any TransportConnection) {
        guard !self.finished else { return }
        for stream in self.unflushedStreams where stream.needsFlush { stream.flush() }
        self.unflushedStreams.removeAll(keepingCapacity: true)
        self.flushAtReadComplete = false
        let ack = self.machine.readEstablished { (due: $0.sequencer.ackDueNow, waiting: $0.sequencer.hasUnacknowledged) }
        if !self.batch.isEmpty || ack?.due == true {
            self.flushNow()
        } else if ack?.waiting == true && self.ackTimer == nil {
            self.ackTimer = self.eventLoop.assumeIsolated().scheduleTask(in: self.configuration.ackDelay) { [self] in
                self.ackTimer = nil
                self.flushNow()
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
        self.transportCloseError = error as? TransportError
        self.perform(self.machine.transportLost(.transportClosed(reason), now: self.eventLoop.now))
    }

    // MARK: Resumption

    /// Closes the transport on purpose (to move the session to another one): the session detaches as if the
    /// connection had dropped, and is resumed on the next.
    func dropTransport() {
        self.eventLoop.preconditionInEventLoop()
        guard self.transport != nil, !self.finished else { return }
        self.perform(self.machine.transportLost(.transportClosed(SessionError.plannedTransportMoveReason), now: self.eventLoop.now))
    }

    /// Client: resumes the detached session on `transport` (dialled on this session's loop).
    func resume(on transport: any TransportConnection) {
        self.eventLoop.preconditionInEventLoop()
        // The HELLO is made before the transport delivers anything: a refusal already waiting on the new
        // connection (a GOAWAY the server sent the moment it saw it) must meet a handshake that has started.
        guard !self.finished, let hello = self.machine.resume(now: self.eventLoop.now) else {
            transport.close()
            return
        }
        self.attach(transport)
        self.schedule(.handshake, in: self.configuration.handshakeTimeout)
        guard !self.finished, self.machine.isResuming, self.transport === transport else { return }
        self.sendAhead(hello)
    }

    /// Server: takes over `transport`, on which a client has just proven (with this session's key) that it
    /// resumes this session. A connection the session still holds (the client saw it fail first) is closed, the
    /// WELCOME goes out with what this side has received, then what the client missed.
    func adopt(_ transport: any TransportConnection, outcome: HandshakeStateMachine.Outcome, welcome: Frame?) {
        self.eventLoop.preconditionInEventLoop()
        guard !self.finished else {
            transport.close()
            return
        }
        if let old = self.transport {
            self.transport = nil
            old.close()
        }
        self.attach(transport)
        guard !self.finished, self.transport === transport else { return }
        self.perform(self.machine.adopt(outcome, welcome: welcome, now: self.eventLoop.now))
    }

    /// Makes `transport` the session's and starts it (what it had read is delivered now).
    private func attach(_ transport: any TransportConnection) {
        self.transport = transport
        self.cipher = nil
        self.frameReader = Self.makeFrameReader(self.configuration)
        self.followUpstreamMode(of: transport)
        transport.start(delegate: self)
    }

    /// Passes a change of `transport`'s upstream mode on to ``onUpstreamModeChange``.
    private func followUpstreamMode(of transport: any TransportConnection) {
        (transport as? any UpstreamModeReporting)?.onUpstreamModeChange = { [weak self] in self?.onUpstreamModeChange?() }
    }

    // MARK: Performing the state machine's actions

    /// A frame off the transport. Once this connection's handshake is done with end-to-end protection, only SEALED
    /// frames may come, each opened as the next one expected; anything else means the path altered the session,
    /// which ends it (no byte of it is delivered).
    private func receive(_ frame: Frame) {
        guard self.cipher != nil else {
            self.handle(frame)
            return
        }
        do {
            try self.sealedFrames.open(frame, with: &self.cipher!)
            // Handling a frame can end the session or detach it (which drops the cipher): then the rest is not read.
            while !self.finished, self.cipher != nil, let inner = try self.sealedFrames.next() {
                self.handle(inner)
            }
        } catch let violation as SealingViolation {
            self.integrityFailed(violation.description)
        } catch let error as FrameDecodingError {
            self.perform(self.machine.decodingFailed(error.goAwayCode, error.description))
        } catch {
            self.perform(self.machine.decodingFailed(.protocolError, "\(error)"))
        }
    }

    /// Ends the session because what came over this connection was not what the peer sealed.
    private func integrityFailed(_ reason: String) {
        self.perform(self.machine.decodingFailed(.protocolError, "end-to-end integrity check failed: \(reason)"))
    }

    private func handle(_ frame: Frame) {
        let action = self.machine.receive(frame, now: self.eventLoop.now)
        if case .lookUpResumption(let id) = action {
            let target = self.resumeLookup?(id)
            self.resumeTarget = target
            self.perform(self.machine.resumptionLookedUp(target.map { ($0.key, $0.capabilities) }, hello: frame, now: self.eventLoop.now))
        } else {
            self.perform(action)
        }
    }

    private func perform(_ action: SessionStateMachine.Action) {
        switch action {
        case .none, .lookUpResumption:
            break
        case .stream(let action):
            self.handleStreamAction(action)
        case .listenRequested(let id, let address):
            if let handler = self.onListenRequested {
                handler(self, id, address)
            } else {
                self.answerListen(id, .failure(StreamOpenFailure(.notAllowed, "this side takes no reverse listeners")))
            }
        case .listening(let id, let port):
            self.onListenAnswered?(id, .success(Int(port)))
        case .listenRefused(let id, let reason, let message):
            self.onListenAnswered?(id, .failure(StreamOpenFailure(reason, message)))
        case .sendNow(let frame):
            self.countIfGoAway(frame)
            self.enqueue(frame)
            self.flushNow()
        case .sendAhead(let frame):
            self.countIfGoAway(frame)
            self.sendAhead(frame)
        case .acknowledged(let mayResumeReads):
            if mayResumeReads { self.resumeReads() }
            if self.endsWhenAcknowledged { self.endIfDrained() }
        case .established(let outcome, let reply):
            self.didEstablish(outcome, reply: reply)
        case .resumed(let outcome, let reply, let replay):
            self.didResume(outcome, reply: reply, replay: replay)
        case .handOver(let outcome, let welcome):
            self.handOver(outcome, welcome: welcome)
        case .refuseSession(let code, let message):
            // As a refusal before the handshake: the GOAWAY stays deliverable (a chunked or polling connection
            // holds it for the client's next request) until the client closes, or two seconds.
            self.logger.warning("refused a new session: \(message)")
            self.refuse(code, message)
        case .peerGoingAway:
            self.logger.info("peer is shutting down: open streams finish, new ones are refused")
            self.onPeerGoingAway?(self)
            self.endIfDrained()
        case .detach(let reason, let expiry):
            self.didDetach(SessionError(reason), expiry: expiry)
        case .abandonResumption:
            self.logger.warning("no answer to the resumption within \(self.configuration.handshakeTimeout.roundedText)")
            self.transport?.close()
        case .end(let reason, let reply):
            if let reply {
                self.countIfGoAway(reply)
                self.enqueue(reply)
                self.flushNow()
            }
            if case .peerWentAway(let code, let message) = reason { self.logger.error("peer ended the session: \(code): \(message)") }
            if case .handshake(let error) = reason, self.machine.hasSession || self.resumeTarget != nil {
                self.logger.warning("resumption failed: \(error)")
            }
            self.finish(self.error(endingWith: reason))
        case .protocolFailure(let goAway, let reason):
            if case .protocolViolation(_, let message) = reason { self.logger.error("protocol error: \(message); ending the session") }
            // The batch is dropped whole: its headers, and the payloads that would have gone out after them.
            self.batch.discard()
            self.countIfGoAway(goAway)
            self.batch.append(goAway)
            self.flushNow()
            self.finish(SessionError(reason))
        }
    }

    /// The error a session that ended with `reason` reports: a transport that closed because of something retrying
    /// cannot fix (its path's content rules, say) reports that error itself, so owners can tell it (the probe
    /// names it, the client stops).
    private func error(endingWith reason: SessionEndReason) -> SessionError {
        if case .transportClosed = reason, let error = self.transportCloseError, error.retryCannotFix {
            return .transport(error)
        }
        return SessionError(reason)
    }

    private func didEstablish(_ outcome: HandshakeStateMachine.Outcome, reply: Frame?) {
        self.sessionIDString = outcome.sessionIDString
        self.logger[metadataKey: "session"] = "\(self.sessionIDString.prefix(8))"
        if let user = outcome.user {
            self.user = user
            self.logger[metadataKey: "user"] = "\(user)"
        }
        // The client signs every request from here on (nothing may go out unsigned after the handshake); the
        // server lifts its limits once its WELCOME is out.
        if self.role == .client {
            self.transport?.sessionAuthenticated(key: outcome.sessionKey)
            self.startSealing(outcome)
        }
        if let reply { self.enqueue(reply) }
        self.timers.removeValue(forKey: .handshake)?.cancel()
        self.logCompressionOutcome()
        self.logProtection(outcome)
        self.flushNow()
        if self.role == .server {
            // The WELCOME went out as it is; everything after it is sealed.
            self.startSealing(outcome)
            self.transport?.sessionAuthenticated(key: outcome.sessionKey)
        }
        if let metrics = self.metrics, let kind = self.transport?.kind, !outcome.isProbe, !self.configuration.isProbe {
            metrics.sessionsOpen(1, transport: kind, user: self.user)
            self.metricsTransport = kind
        }
        self.establishedPromise.succeed(outcome)
    }

    /// The resumption handshake finished: send the peer what it missed, then what waited, and carry on.
    private func didResume(_ outcome: HandshakeStateMachine.Outcome, reply: Frame?, replay: [ByteBuffer]) {
        guard let transport = self.transport else { return }
        if self.role == .client { transport.sessionAuthenticated(key: outcome.sessionKey) }
        self.timers.removeValue(forKey: .handshake)?.cancel()
        self.timers.removeValue(forKey: .detachedExpiry)?.cancel()
        if let reply { self.sendAhead(reply) }
        // New keys for this connection: the frames sent again are sealed afresh.
        self.startSealing(outcome)
        var batch = ByteBufferAllocator().buffer(capacity: replay.reduce(0) { $0 + $1.readableBytes })
        for frame in replay { batch.writeImmutableBuffer(frame) }
        if batch.readableBytes > 0 { self.send(batch, on: transport) }
        if let goAway = self.machine.goAwayAfterResumption {
            self.countIfGoAway(goAway)
            self.enqueue(goAway)
        }
        self.logger.info("session resumed over \(transport.kind) (\(replay.count) frames sent again)")
        if let metrics = self.metrics {
            self.reportTraffic()
            if let counted = self.metricsTransport, counted != transport.kind {
                metrics.sessionsOpen(-1, transport: counted, user: self.user)
                metrics.sessionsOpen(1, transport: transport.kind, user: self.user)
                self.metricsTransport = transport.kind
            }
            metrics.resumed(transport: transport.kind, afterNanoseconds: self.detachedAt.map { (NIODeadline.now() - $0).nanoseconds } ?? 0)
        }
        self.detachedAt = nil
        self.flushNow()
        if self.role == .server { transport.sessionAuthenticated(key: outcome.sessionKey) }
        self.resumeReads()
        self.onResumed?(self)
        // Going away, its last streams may have finished while it was detached.
        self.endIfDrained()
    }

    /// Server: hands this connection to the session it proved to resume (on that session's loop) and ends.
    private func handOver(_ outcome: HandshakeStateMachine.Outcome, welcome: Frame?) {
        guard let transport = self.transport, let target = self.resumeTarget else { return }
        self.transport = nil
        let session = target.session
        if session.eventLoop === transport.eventLoop {
            // On this loop already (the connection's, so this session's too): adopted from a fresh stack.
            session.eventLoop.assumeIsolated().execute { session.session.adopt(transport, outcome: outcome, welcome: welcome) }
        } else {
            // The connection lives on another loop than the session (a WebSocket or CONNECT socket another loop
            // took): bridge it (this also makes the bridge its delegate at once, so nothing it receives from now on
            // reaches this session).
            let bridge = LoopBridgedTransport(transport, to: session.eventLoop)
            session.execute { $0.adopt(bridge, outcome: outcome, welcome: welcome) }
        }
        self.finish(.handedOver)
    }

    /// The transport is gone: the session waits for a new one, streams open. The old connection is closed.
    private func didDetach(_ reason: SessionError, expiry: NIODeadline?) {
        if self.metrics != nil {
            self.reportTraffic()
            self.detachedAt = .now()
        }
        let old = self.transport
        self.transport = nil
        self.cipher = nil
        self.flushAtReadComplete = false
        self.frameReader = Self.makeFrameReader(self.configuration)
        self.timers.removeValue(forKey: .handshake)?.cancel()
        if case .keepaliveTimeout = reason { self.logger.error("no keepalive answer; declaring the tunnel connection dead") }
        if case .handshake(.refusedByPeer(_, let message)) = reason {
            self.logger.warning("the server cannot resume the session now (\(message)); trying again")
        }
        if reason.isPlannedTransportMove {
            self.logger.info("resuming the session on the new transport; its \(self.streams.count) stream\(self.streams.count == 1 ? "" : "s") stay open")
        } else {
            self.logger.info("tunnel connection lost (\(reason)); streams stay open while the session waits to be resumed")
        }
        if let expiry {
            self.timers[.detachedExpiry]?.cancel()
            self.timers[.detachedExpiry] = self.eventLoop.assumeIsolated().scheduleTask(deadline: expiry) { [self] in
                self.logger.info("not resumed within \(self.configuration.detachedGracePeriod.roundedText): closing its \(self.streams.count) streams")
                self.perform(self.machine.timerFired(.detachedExpiry, now: self.eventLoop.now))
            }
        }
        self.onDetached?(self, reason)
        old?.close()
    }

    private func schedule(_ timer: SessionStateMachine.Timer, in delay: TimeAmount) {
        self.timers[timer]?.cancel()
        self.timers[timer] = self.eventLoop.assumeIsolated().scheduleTask(in: delay) { [self] in
            self.perform(self.machine.timerFired(timer, now: self.eventLoop.now))
        }
    }

    // MARK: Stream frames

    private func handleStreamAction(_ action: MuxInboundAction) {
        switch action {
        case .deliver(let id, let flags, let payload):
            guard let stream = self.streams[id] else { return }
            if flags.contains(.compressed) {
                self.deliverCompressed(stream, payload)
            } else {
                self.deliver(stream, payload)
            }
        case .creditAvailable(let id):
            if let stream = self.streams[id] {
                self.pump(stream)
                self.readIfAllowed(stream)
            }
        case .openRequested(let id, let target):
            self.openRequested(id, target: target)
        case .opened(let id):
            if let stream = self.streams[id] {
                self.logger.debug("stream \(id): open to \(stream.target)")
                stream.openCompletion?(.opened)
                stream.openCompletion = nil
                self.pump(stream)
                self.readIfAllowed(stream)
            }
        case .openFailed(let id, let reason, let message):
            self.statistics.streamsRefused += 1
            if let stream = self.streams[id] {
                self.logger.warning("server refused target \(stream.target): \(reason): \(message)")
                self.removeStream(stream, result: .refused(reason, message))
                stream.close(abort: false)
            }
        case .remoteFinished(let id, let complete):
            self.logger.trace("stream \(id): FIN received, complete: \(complete)")
            guard let stream = self.streams[id] else { return }
            if complete {
                self.finishStream(stream)
            } else {
                stream.outputShutRequested = true
                stream.shutOutputAfterWrites()
            }
        case .reset(let id, let code, let message):
            self.statistics.streamsReset += 1
            if let stream = self.streams[id] {
                self.logger.debug("stream \(id) to \(stream.target) reset by peer: \(code) \(message)")
                self.removeStream(stream, result: .refused(.other, message))
                stream.close(abort: true)
            }
        case .reply(let reply, let closeStream, let reason):
            self.logger.warning("\(reason)")
            self.enqueue(reply)
            if let id = closeStream, let stream = self.streams[id] {
                self.statistics.streamsReset += 1
                self.removeStream(stream, result: .unavailable(reason))
                stream.close(abort: true)
            }
        case .ignore(let reason):
            self.logger.trace("\(reason)")
        case .sessionError(let code, let message):
            self.perform(self.machine.decodingFailed(code, message))
        }
    }

    /// Writes a DATA payload to the stream's socket, and credits the peer at once while the socket takes writes
    /// (what a relay does): a socket that stops taking them holds its credit until it drains.
    private func deliver(_ stream: StreamChannelHandler, _ payload: ByteBuffer) {
        let count = payload.readableBytes
        self.statistics.bytesReceived += count
        stream.write(payload)
        if !stream.needsFlush {
            stream.needsFlush = true
            self.unflushedStreams.append(stream)
        }
        if stream.isWritable && stream.uncreditedBytes == 0 {
            self.credit(stream, bytes: count)
        } else {
            stream.uncreditedBytes += count
        }
    }

    private func credit(_ stream: StreamChannelHandler, bytes: Int) {
        guard let (frames, complete) = self.machine.withEstablished({ $0.mux.consumed(stream.id, bytes: bytes) }) else { return }
        for frame in frames { self.enqueue(frame) }
        if complete { self.finishStream(stream) }
    }

    /// Inflates a compressed DATA payload with the stream's own context, charges the inflated size against the
    /// stream's credit, and delivers it. A payload that inflates past the maximum DATA size (a decompression bomb)
    /// or does not inflate ends this stream only.
    private func deliverCompressed(_ stream: StreamChannelHandler, _ payload: ByteBuffer) {
        guard self.machine.compressionEnabled else {
            self.resetStream(stream, .protocolError, "compressed DATA without negotiated compression")
            return
        }
        let limit = self.configuration.mux.maximumDataPayload
        var input = payload
        var output = ByteBufferAllocator().buffer(capacity: limit + 1)
        do {
            if stream.decompressor == nil {
                stream.decompressor = try ZlibDecompressor(algorithm: .deflate, windowSize: 15)
            }
            try stream.decompressor!.inflate(from: &input, to: &output)
        } catch let error as CompressNIOError where error == .bufferOverflow {
            self.resetStream(stream, .decompressionBomb, "compressed DATA inflates past the \(limit)-byte maximum")
            return
        } catch {
            self.resetStream(stream, .protocolError, "compressed DATA does not inflate: \(error)")
            return
        }
        guard input.readableBytes == 0 else {
            self.resetStream(stream, .decompressionBomb, "compressed DATA inflates past the \(limit)-byte maximum")
            return
        }
        if let violation = self.machine.withEstablished({ $0.mux.receivedInflated(stream.id, bytes: output.readableBytes) }) ?? nil {
            self.handleStreamAction(violation)
            return
        }
        self.deliver(stream, output)
    }

    private func resetStream(_ stream: StreamChannelHandler, _ code: ResetCode, _ message: String) {
        self.logger.warning("stream \(stream.id): \(message)")
        self.enqueueIfAny(self.machine.withEstablished { $0.mux.localReset(stream.id, code: code, message: message) } ?? nil)
        if self.streams[stream.id] === stream {
            self.statistics.streamsReset += 1
            self.removeStream(stream, result: .unavailable(message))
            stream.close(abort: true)
        }
    }

    /// Forgets `stream`; a listener still waiting for its opening hears `result`.
    private func removeStream(_ stream: StreamChannelHandler, result: StreamOpenResult) {
        if self.streams.removeValue(forKey: stream.id) != nil { self.metrics?.streamsOpen(-1) }
        if let completion = stream.openCompletion {
            stream.openCompletion = nil
            completion(result)
        }
        self.onStreamRemoved?()
    }

    /// Both directions finished: close the socket once what was written is out, and forget the stream.
    private func finishStream(_ stream: StreamChannelHandler) {
        self.removeStream(stream, result: .opened)
        self.logger.debug("stream \(stream.id) to \(stream.target) finished")
        stream.closeAfterWrites()
        self.endIfDrained()
    }

    // MARK: Sending stream data

    /// Frames as much of the stream's pending bytes as its credit allows; sends FIN once they are all out.
    private func pump(_ stream: StreamChannelHandler) {
        while var pending = stream.pendingSend {
            let sendable = self.machine.readEstablished { $0.mux.sendableBytes(stream.id) } ?? 0
            guard sendable > 0 else { break }
            let slice = pending.readSlice(length: min(sendable, pending.readableBytes))!
            self.statistics.bytesSent += slice.readableBytes
            stream.pendingSend = pending.readableBytes > 0 ? pending : nil
            guard let frame = self.makeDataFrame(stream, slice) else { return }
            self.enqueue(frame)
        }
        if stream.finPending && stream.pendingSend == nil { self.sendFin(stream) }
    }

    /// A DATA frame for `slice`, compressed with the stream's own deflate context when compression is on and pays
    /// for this stream's data. Once bytes went through the compressor they must go out compressed: the peer's
    /// inflate context has to see every compressed block, in order.
    private func makeDataFrame(_ stream: StreamChannelHandler, _ slice: ByteBuffer) -> Frame? {
        let original = slice.readableBytes
        if self.machine.compressionEnabled, original > 0, !stream.compressionFailed,
            stream.compressionPolicy.shouldCompress(bytes: original)
        {
            do {
                if stream.compressor == nil {
                    let settings = self.configuration.compression
                    stream.compressor = try ZlibCompressor(
                        algorithm: .deflate,
                        configuration: ZlibConfiguration(
                            windowSize: settings.windowBits,
                            compressionLevel: settings.level,
                            memoryLevel: settings.memoryLevel
                        )
                    )
                }
                var input = slice
                let compressed = try input.compressStream(with: stream.compressor!, flush: .sync)
                stream.compressionPolicy.record(original: original, compressed: compressed.readableBytes)
                self.statistics.compressedFramesSent += 1
                self.statistics.payloadBytesOnWireSent += compressed.readableBytes
                return self.machine.withEstablished {
                    $0.mux.sendData(stream.id, payload: compressed, flags: .compressed, originalBytes: original)
                }
            } catch {
                // zlib failing here (out of memory) leaves the context unusable: stop compressing this stream.
                self.logger.error("stream \(stream.id): compression failed (\(error)); sending it uncompressed")
                stream.compressionFailed = true
                stream.compressor = nil
            }
        }
        self.statistics.rawFramesSent += 1
        self.statistics.payloadBytesOnWireSent += original
        return self.machine.withEstablished { $0.mux.sendData(stream.id, payload: slice) }
    }

    private func logCompressionOutcome() {
        switch (self.role, self.configuration.compression.enabled, self.machine.compressionEnabled) {
        case (_, _, true):
            self.logger.info("compression on: zlib level \(self.configuration.compression.level), one context per stream")
        case (.client, true, false):
            self.logger.warning("compression off: the server does not agree to it (started with --no-compress)")
        case (.server, false, _):
            self.logger.debug("compression off: this server runs with --no-compress")
        default:
            self.logger.debug("compression off: not requested")
        }
    }

    private func sendFin(_ stream: StreamChannelHandler) {
        stream.finPending = false
        guard let (frame, complete) = self.machine.withEstablished({ $0.mux.localFinished(stream.id) }) ?? nil else { return }
        self.enqueue(frame)
        if complete { self.finishStream(stream) }
    }

    /// Whether `stream` may read its socket now. A stream held back by the session (not by its own credit) is
    /// remembered, and read again when the session can send.
    private func canRead(_ stream: StreamChannelHandler) -> Bool {
        let room =
            self.machine.isCarryingStreams && (self.transport?.isWritable ?? false)
            && (self.machine.readEstablished { $0.sequencer.replayBytes < self.configuration.mux.sessionMemoryLimit } ?? false)
        guard room else {
            if !stream.awaitsSessionRoom {
                stream.awaitsSessionRoom = true
                self.waitingForRoom.append(stream)
            }
            return false
        }
        guard stream.pendingSend == nil, !stream.finPending else { return false }
        return (self.machine.readEstablished { $0.mux.sendableBytes(stream.id) } ?? 0) > 0
    }

    private func readIfAllowed(_ stream: StreamChannelHandler) {
        if self.canRead(stream) { stream.requestRead() }
    }

    /// The session can send again: the streams it held back read again (only those: the others are waiting for
    /// their own credit, so this costs nothing per idle stream).
    private func resumeReads() {
        guard !self.waitingForRoom.isEmpty else { return }
        let waiting = self.waitingForRoom
        self.waitingForRoom.removeAll(keepingCapacity: true)
        for stream in waiting {
            stream.awaitsSessionRoom = false
            if self.streams[stream.id] === stream { self.readIfAllowed(stream) }
        }
    }

    // MARK: Output

    private func enqueueIfAny(_ frame: Frame?) {
        if let frame { self.enqueue(frame) }
    }

    func enqueue(_ frame: Frame) {
        self.batch.append(frame)
        if self.batch.byteCount >= self.configuration.maximumBatchSize {
            self.flushNow()
        } else if !self.flushAtReadComplete {
            self.scheduleFlush()
        }
    }

    /// Frames queued outside a transport read (stream sockets' reads, a timer, a socket that drained, a connector
    /// that answered) go out together at the end of this loop tick.
    private func scheduleFlush() {
        guard !self.flushScheduled else { return }
        self.flushScheduled = true
        self.eventLoop.assumeIsolated().execute { [self] in self.flushNow() }
    }

    private func flushNow() {
        self.flushScheduled = false
        guard let transport = self.transport, !self.machine.isResuming else { return }
        if !self.finished,
            let ack = self.machine.withEstablished({ $0.sequencer.hasUnacknowledged ? $0.sequencer.makeAck() : nil }) ?? nil
        {
            self.batch.append(ack)
        }
        guard !self.batch.isEmpty else { return }
        if self.batch.hasUnrecordedReliableFrames {
            self.machine.withEstablished { self.batch.recordReliableFrames(in: &$0.sequencer) }
        }
        // Taken before it is sent: sending can close the transport, and what that sets off may queue frames again.
        let parts = self.batch.takeMessage()
        if parts.count == 1 {
            self.send(parts[0], on: transport)
        } else if self.cipher != nil {
            // Sealed as they lie, in one pass: the sealed message is the only copy.
            transport.send(self.cipher!.sealMessage(parts))
        } else {
            transport.send(parts: parts)
        }
        self.statistics.transportMessagesSent += 1
    }

    /// Sends a handshake frame at once, ahead of the stream frames waiting in the batch (during a resumption the
    /// batch holds frames for after it).
    private func sendAhead(_ frame: Frame) {
        guard let transport = self.transport else { return }
        var buffer = ByteBufferAllocator().buffer(capacity: 128)
        self.encoder.encode(frame, into: &buffer)
        self.send(buffer, on: transport)
    }

    // MARK: End-to-end protection

    /// Seals (and opens) this connection's frames from now on with the keys of its handshake, if both sides agreed.
    private func startSealing(_ outcome: HandshakeStateMachine.Outcome) {
        self.cipher = outcome.sealingKeys.map { SessionCipher(keys: $0, isClient: self.role == .client) }
    }

    /// Says, once per session, whether its frames are protected end to end.
    private func logProtection(_ outcome: HandshakeStateMachine.Outcome) {
        if outcome.sealingKeys != nil {
            self.logger.debug("end-to-end protection on: frames sealed with AES-256-GCM under keys from an X25519 exchange")
        } else {
            self.logger.warning(
                "end-to-end session encryption is off on both sides (--no-session-encryption): this session relies on TLS alone, and a proxy that opens TLS can read and alter it"
            )
        }
    }

    /// Sends one transport message of whole frames: sealed once this connection's handshake is done (in SEALED
    /// frames of at most ``SessionCipher/maximumPlaintextLength`` bytes each, cut between frames), as it is before.
    private func send(_ message: ByteBuffer, on transport: any TransportConnection) {
        guard self.cipher != nil else {
            transport.send(message)
            return
        }
        transport.send(self.cipher!.sealMessage(CollectionOfOne(message)))
    }

    // MARK: Ending

    /// Ends a session that is going away once its last stream is done and the peer has acknowledged everything it
    /// was sent. What was sent may not have reached the peer yet — a chunked or polling connection holds it for the
    /// next response the client asks for — and closing the transport then would lose the streams' last bytes. The
    /// wait is bounded by the keepalive timeout (and a server's drain by its grace period).
    private func endIfDrained() {
        guard self.machine.isGoingAway && self.streams.isEmpty && !self.finished else { return }
        self.flushNow()
        let unacknowledged = self.machine.readEstablished { $0.sequencer.replayBytes } ?? 0
        // (Detached, it waits as long for the resumption that lets the peer acknowledge.)
        if unacknowledged > 0 {
            guard !self.endsWhenAcknowledged else { return }
            self.endsWhenAcknowledged = true
            self.eventLoop.assumeIsolated().scheduleTask(in: self.configuration.keepaliveTimeout) { [self] in
                if !self.finished {
                    self.logger.info("the peer acknowledged not all of the last \(unacknowledged) bytes within \(self.configuration.keepaliveTimeout.roundedText): ending the session")
                }
                self.end(.shutdown)
            }
            return
        }
        self.end(.shutdown)
    }

    private func end(_ reason: SessionError) {
        _ = self.machine.end(reason.endReason)
        self.finish(reason)
    }

    /// Releases everything the session holds and reports how it ended.
    private func finish(_ reason: SessionError) {
        guard !self.finished else { return }
        self.finished = true
        if let metrics = self.metrics {
            self.reportTraffic()
            if !self.streams.isEmpty { metrics.streamsOpen(-Int64(self.streams.count)) }
            if let counted = self.metricsTransport { metrics.sessionsOpen(-1, transport: counted, user: self.user) }
            self.metricsTransport = nil
        }
        for timer in self.timers.values { timer.cancel() }
        self.timers.removeAll()
        self.ackTimer?.cancel()
        self.keepaliveTask?.cancel()
        let streams = self.streams.values
        self.streams.removeAll()
        self.waitingForRoom.removeAll()
        self.unflushedStreams.removeAll()
        for stream in streams {
            if let completion = stream.openCompletion {
                stream.openCompletion = nil
                completion(.unavailable("the tunnel session ended: \(reason)"))
            }
            stream.closeAfterWrites(within: self.configuration.keepaliveTimeout)
        }
        self.transport?.close()
        self.transport = nil
        // The owners' callbacks capture their owners (a client holds its session): let go of them, or an ended
        // session and its client would keep each other alive.
        self.connector = nil
        self.onListenRequested = nil
        self.onListenAnswered = nil
        self.admitFirstMessage = nil
        self.onDetached = nil
        self.onResumed = nil
        self.onPeerGoingAway = nil
        self.onUpstreamModeChange = nil
        self.onStreamRemoved = nil
        self.resumeLookup = nil
        self.resumeTarget = nil
        self.establishedPromise.fail(reason)
        self.endedPromise.succeed(reason)
    }

    // MARK: Live status

    /// Sends a PING that measures the round trip (unless one is unanswered); ``roundTrip`` shows the answer.
    /// On the session's loop.
    public func measureRoundTrip() {
        self.perform(self.machine.measureRoundTrip(now: self.eventLoop.now))
    }

    /// The last round trip measured on this session (by ``measureRoundTrip()``, or else by keepalive). On its loop.
    var roundTrip: TimeAmount? { self.machine.roundTrip }

    // MARK: Metrics

    /// Reports the stream bytes moved since the last report, under the transport that moved them, and returns the
    /// receive memory the session has committed to its streams. Called on the session's loop (a scrape of the
    /// metrics asks every session), and when the transport changes or the session ends.
    @discardableResult
    func reportTraffic() -> Int {
        guard let metrics = self.metrics else { return 0 }
        let sent = self.statistics.bytesSent - self.reportedBytes.sent
        let received = self.statistics.bytesReceived - self.reportedBytes.received
        if let kind = self.metricsTransport ?? self.transport?.kind, sent > 0 || received > 0 {
            metrics.bytes(sent: sent, received: received, transport: kind)
            self.reportedBytes = (self.statistics.bytesSent, self.statistics.bytesReceived)
        }
        return self.machine.readEstablished { $0.mux.committedMemory } ?? 0
    }

    private func countIfGoAway(_ frame: Frame) {
        if let metrics = self.metrics, case .goAway(let code, _) = frame { metrics.goAwaySent(code) }
    }
}
