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
    //
    // Three files: this one (the handshake, the transport's events, the machine's actions, output, ending),
    // TunnelSession+Streams (opening streams, their sockets' events, stream frames) and TunnelSession+Resumption
    // (detach, resume, adopt, hand over). Members without `private` are shared with those two files; nothing
    // outside the session touches them.

    public enum Role: Sendable {
        case client
        case server
    }

    public let role: Role
    public let eventLoop: any EventLoop
    public let configuration: SessionConfiguration
    private(set) var logger: Logger

    var machine: SessionStateMachine
    var transport: (any TransportConnection)?
    /// The error the current transport closed with, when it said one.
    private var transportCloseError: TransportError?
    var frameReader: FrameReader
    private let encoder = FrameEncoder()
    /// Seals what this side sends and opens what it receives on the current transport, once its handshake is done
    /// (nil before, while detached, and with end-to-end protection off).
    var cipher: SessionCipher?
    /// Opens the SEALED frames off the transport and reads the frames each holds.
    private var sealedFrames: SealedFrameReader
    /// The frames for the next transport message.
    private var batch = OutboundBatch()
    /// A read of the transport is under way: what it queues goes out at its read-complete (as nio-http2 flushes at
    /// `channelReadComplete`). Stream sockets' reads queue a flush for the end of the loop tick instead, so that
    /// many streams reading at once share one transport message.
    var flushAtReadComplete = false
    private var flushScheduled = false
    var streams: [StreamID: StreamChannelHandler] = [:]
    /// Streams written to in this read, flushed together at its end.
    var unflushedStreams: [StreamChannelHandler] = []
    /// Streams that stopped reading because the session could not send (transport full, replay buffer full,
    /// detached): read again when that changes. Streams short of their own credit are woken by their WINDOW.
    var waitingForRoom: [StreamChannelHandler] = []
    var timers: [SessionStateMachine.Timer: Scheduled<Void>] = [:]
    private var ackTimer: Scheduled<Void>?
    private var keepaliveTask: Scheduled<Void>?
    /// The session's resources (sockets, timers, callbacks) have been released.
    var finished = false
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
    var resumeTarget: ResumableSession?

    /// The session's counters so far. On its loop; other threads read ``SessionHandle/snapshot()``.
    var statistics = SessionStatistics()
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
    var metricsTransport: TransportKind?
    /// Stream bytes already reported to the metrics, each way.
    private var reportedBytes = (sent: 0, received: 0)
    /// When the transport was lost: a resumption reports how long data stopped.
    var detachedAt: NIODeadline?
    var metrics: TunnelMetrics? { self.configuration.metrics }
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

    static func makeFrameReader(_ configuration: SessionConfiguration) -> FrameReader {
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
        let ack = self.machine.acknowledgementState()
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

    func perform(_ action: SessionStateMachine.Action) {
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

    func schedule(_ timer: SessionStateMachine.Timer, in delay: TimeAmount) {
        self.timers[timer]?.cancel()
        self.timers[timer] = self.eventLoop.assumeIsolated().scheduleTask(in: delay) { [self] in
            self.perform(self.machine.timerFired(timer, now: self.eventLoop.now))
        }
    }

    // MARK: Output

    func enqueueIfAny(_ frame: Frame?) {
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

    func flushNow() {
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
    func sendAhead(_ frame: Frame) {
        guard let transport = self.transport else { return }
        var buffer = ByteBufferAllocator().buffer(capacity: 128)
        self.encoder.encode(frame, into: &buffer)
        self.send(buffer, on: transport)
    }

    // MARK: End-to-end protection

    /// Seals (and opens) this connection's frames from now on with the keys of its handshake, if both sides agreed.
    func startSealing(_ outcome: HandshakeStateMachine.Outcome) {
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
    func send(_ message: ByteBuffer, on transport: any TransportConnection) {
        guard self.cipher != nil else {
            transport.send(message)
            return
        }
        transport.send(self.cipher!.sealMessage(message))
    }

    // MARK: Ending

    /// Ends a session that is going away once its last stream is done and the peer has acknowledged everything it
    /// was sent. What was sent may not have reached the peer yet — a chunked or polling connection holds it for the
    /// next response the client asks for — and closing the transport then would lose the streams' last bytes. The
    /// wait is bounded by the keepalive timeout (and a server's drain by its grace period).
    func endIfDrained() {
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
    func finish(_ reason: SessionError) {
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

    func countIfGoAway(_ frame: Frame) {
        if let metrics = self.metrics, case .goAway(let code, _) = frame { metrics.goAwaySent(code) }
    }
}
