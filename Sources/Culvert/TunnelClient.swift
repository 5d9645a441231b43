public import CulvertCore
public import CulvertTransport
public import Logging
import NIOConcurrencyHelpers
public import NIOCore
import NIOPosix

/// The client end of the tunnel: connects a session to the server over the chosen transport and carries every
/// connection accepted on its local forwards as a stream of that session.
///
/// When the transport connection drops, the client reconnects with jittered exponential backoff and resumes the
/// session: streams stay open, applications see a pause. When the server cannot resume it (it expired, or the
/// server restarted) or ends it with GOAWAY, the client starts a new session and keeps its listeners open
/// throughout; streams of the old session are lost and the log says so.
public final class TunnelClient: StreamOpening, Sendable {
    public struct Configuration: Sendable {
        public var server: ServerEndpoint
        public var transport: TransportKind
        public var transportOptions: TransportOptions
        public var session: SessionConfiguration
        public var forwards: [ForwardSpec]
        /// Listeners besides the `-L` forwards (SOCKS5, HTTP proxy), bound after them.
        public var listeners: [LocalListener] = []
        /// `-R` forwards: the server listens on each one's BIND:PORT (its own side; BIND defaults to 127.0.0.1 there)
        /// and every connection accepted there is connected to its HOST:HOSTPORT on this side.
        public var reverseForwards: [ForwardSpec] = []
        /// Standard input and output as one stream to this target (`--stdio`, ssh's ProxyCommand), carried from the
        /// start: before the first session is up its bytes wait for it. ``TunnelClient/standardIOEnded`` says when it
        /// is over.
        public var standardIO: TargetAddress?
        /// A UDP flow (`-L …/udp`) with no datagram either way for this long ends its stream.
        public var udpTimeout: TimeAmount = .seconds(30)
        /// Every listener the client opens: the forwards, then ``listeners``.
        public var allListeners: [LocalListener] {
            self.forwards.map { LocalListener.forward($0, udpTimeout: self.udpTimeout) } + self.listeners
        }
        /// When to reconnect after the transport connection drops (100 ms doubling to 30 s, jittered; starts over
        /// after a connection stayed up 10 s).
        public var reconnect: ReconnectBackoff
        /// Transports to move to, in order, when the current one keeps failing: its connection dropped
        /// ``failuresBeforeFallback`` times within ``fallbackWindow`` (e.g. a proxy that cuts it every 60 s).
        public var fallbacks: [TransportKind] = []
        public var failuresBeforeFallback = 3
        public var fallbackWindow: TimeAmount = .seconds(600)
        /// How long the first connection keeps trying while the server turns it away for now (it throttles this
        /// address, or is at its session limit), waiting the reconnect backoff between tries.
        public var maximumRefusalWait: TimeAmount = .seconds(120)
        /// How long the first connection keeps trying while it cannot reach the server (or its proxy). nil: for
        /// ever; zero (the default, so that a caller learns at once): it gives up at the first failure. Errors that
        /// trying again cannot fix (a wrong token, TLS refused, …) end it at once whatever this says.
        public var firstConnectionRetryTime: TimeAmount? = .zero
        /// How long the client keeps trying to reconnect after its connection or its session was lost before it
        /// gives up and ends (nil, the default: for ever).
        public var reconnectRetryTime: TimeAmount?

        public init(
            server: ServerEndpoint,
            transport: TransportKind = .websocket,
            transportOptions: TransportOptions = TransportOptions(),
            session: SessionConfiguration,
            forwards: [ForwardSpec],
            reconnect: ReconnectBackoff = ReconnectBackoff()
        ) {
            self.server = server
            self.transport = transport
            self.transportOptions = transportOptions
            self.session = session
            self.forwards = forwards
            self.reconnect = reconnect
        }
    }

    private struct State {
        /// The session that carries new streams; nil until the first one is established.
        var session: SessionHandle?
        var backoff: ReconnectBackoff
        /// The transport new connections use: the configured one until ``TunnelClient/switchTransport(to:)``.
        var transport: TransportKind
        /// When the current transport's connections dropped, within the fallback window.
        var recentDrops: [NIODeadline] = []
        var fallbacks: [TransportKind]
        var stopping = false
        var finished = false
        var sessionsStarted = 0
        /// Since when the client has had no working connection to the server (nil while it has one).
        var disconnectedSince: NIODeadline?
        /// Sessions the server sent GOAWAY on, kept until their open streams have finished.
        var draining: [SessionHandle] = []
        /// Stream bytes moved by the sessions that have ended, so that the live status's totals never go back.
        var bytesOfEndedSessions = (sent: 0, received: 0)
        /// Whether `session` has ended and its bytes are in `bytesOfEndedSessions` (until the next one replaces it).
        var currentSessionEnded = false
    }

    /// A connection a listener accepted while no session was established: it waits for the first one.
    private struct WaitingConnection {
        var channel: any Channel
        var target: TargetAddress
        var completion: (StreamOpenResult) -> Void
        /// Holds what the connection delivers while it waits.
        var buffer: WaitingConnectionBuffer
    }

    /// At most this many accepted connections wait for the first session; more are closed at once.
    public static let maximumWaitingConnections = 64

    let configuration: Configuration
    /// The loop of every session of this client, and of the connections they carry.
    let eventLoop: any EventLoop
    let logger: Logger
    private let state: NIOLockedValueBox<State>
    private let listeners: NIOLockedValueBox<[any Channel]>
    private let endedPromise: EventLoopPromise<SessionError>
    /// The answers to the current session's `-R` requests (see ``reverseListenersAnswered``).
    let reverseAnswers = NIOLockedValueBox<EventLoopFuture<[ReverseListenerOutcome]>?>(nil)
    /// Completed when the ``Configuration/standardIO`` stream is over (nil without one).
    let standardIOPromise: EventLoopPromise<StreamOpenResult>?
    /// Connections waiting for the first session, on the client's loop (where listeners hand them over).
    private let waiting: NIOLoopBoundBox<[WaitingConnection]>

    /// The local address of each listener, in the order of ``Configuration/allListeners`` (the forwards first).
    public var listenerAddresses: [SocketAddress] {
        self.listeners.withLockedValue { $0.compactMap(\.localAddress) }
    }

    /// The session that carries the streams now (a new one after the server refused to resume the last). Only for
    /// a client that ``connect(configuration:group:logger:)`` returned (it has a session from then on).
    public var session: SessionHandle {
        guard let session = self.state.withLockedValue({ $0.session }) else {
            preconditionFailure("TunnelClient.session read before the first session was established")
        }
        return session
    }
    /// Brings the metrics up to date for a scrape: the session reports the bytes it moved since it last did.
    public func collectMetrics() async {
        guard let session = self.state.withLockedValue({ $0.session }) else { return }
        _ = try? await session.submit { $0.reportTraffic() }.get()
    }

    /// A sample for a live status line: the current session's and the draining sessions' streams and bytes, read on
    /// their loops. With `measuringRoundTrip`, the current session also sends a PING whose answer the next sample
    /// shows.
    public func liveStatus(measuringRoundTrip: Bool) async -> ClientLiveStatus {
        // A session's bytes count live until it ends and in the ended total after, never both: one lock takes both.
        let (current, draining, transport, connected, ended) = self.state.withLockedValue {
            ($0.currentSessionEnded ? nil : $0.session, $0.draining, $0.transport, $0.disconnectedSince == nil, $0.bytesOfEndedSessions)
        }
        var status = ClientLiveStatus(
            transport: transport, isConnected: connected, roundTrip: nil, openStreams: 0, bytesSent: ended.sent,
            bytesReceived: ended.received, sessions: 0
        )
        for session in [current].compactMap({ $0 }) + draining {
            let isCurrent = session == current
            let sample = try? await session.submit { session in
                if isCurrent && measuringRoundTrip { session.measureRoundTrip() }
                return (session.streamCount, session.statistics, isCurrent ? session.roundTrip : nil)
            }.get()
            guard let (streams, statistics, roundTrip) = sample else { continue }
            status.sessions += 1
            status.openStreams += streams
            status.bytesSent += statistics.bytesSent
            status.bytesReceived += statistics.bytesReceived
            if isCurrent { status.roundTrip = roundTrip }
        }
        return status
    }

    /// Sessions started so far (1 until the server restarts or refuses a resumption).
    public var sessionsStarted: Int { self.state.withLockedValue { $0.sessionsStarted } }
    /// Whether the client has a working connection to the server now (false while it reconnects or resumes).
    public var isConnected: Bool { self.state.withLockedValue { $0.disconnectedSince == nil } }
    /// Notified after each change of what the client reports (a session started, a connection lost or resumed, a
    /// transport or its upstream mode changed, a stream of the session ended, the client ended): await a condition on it with ``StateChangeSignal/wait(timeout:until:)``.
    public let changes = StateChangeSignal()

    private init(configuration: Configuration, eventLoop: any EventLoop, logger: Logger) {
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.logger = logger
        self.state = NIOLockedValueBox(
            State(
                backoff: configuration.reconnect, transport: configuration.transport,
                fallbacks: configuration.fallbacks.filter { $0 != configuration.transport },
                disconnectedSince: .now()
            )
        )
        self.listeners = NIOLockedValueBox([])
        self.endedPromise = eventLoop.makePromise()
        self.standardIOPromise = configuration.standardIO.map { _ in eventLoop.makePromise() }
        self.waiting = NIOLoopBoundBox.makeBoxSendingValue([], eventLoop: eventLoop)
    }

    deinit {
        // A client dropped without shutdown() (or one whose listeners failed to bind) has ended too.
        self.finish(.shutdown)
    }

    /// Opens the local listeners, then connects and completes the session handshake over the configured
    /// transport. While the server (or the proxy) cannot be reached it keeps trying, with the reconnect backoff,
    /// for up to ``Configuration/firstConnectionRetryTime``; connections accepted meanwhile wait for the session.
    /// - Throws: ``SessionError`` (unreachable server past the retry time, wrong token, …) or ``ForwardingError``
    ///   (a port in use).
    public static func connect(
        configuration: Configuration,
        group: any EventLoopGroup,
        logger: Logger
    ) async throws -> TunnelClient {
        let client = try await Self.open(configuration: configuration, group: group, logger: logger)
        try await client.connectFirstSession { try await client.startSession(over: client.currentTransport) }
        return client
    }

    /// Opens the local listeners of a client that has no session yet; ``connectFirstSession(_:)`` gives it one.
    /// - Throws: ``ForwardingError`` when a listener cannot be opened.
    static func open(configuration: Configuration, group: any EventLoopGroup, logger: Logger) async throws -> TunnelClient {
        let client = TunnelClient(configuration: configuration, eventLoop: group.next(), logger: logger)
        var listeners: [any Channel] = []
        do {
            for listener in configuration.allListeners {
                // Accepted connections live on the sessions' loop (every session of this client uses it).
                listeners.append(try await listener.bind(group: group, streamLoop: client.eventLoop, tunnel: client, logger: logger))
            }
        } catch {
            for listener in listeners { try? await listener.close() }
            throw error
        }
        client.listeners.withLockedValue { $0 = listeners }
        if let target = configuration.standardIO {
            do {
                try await client.carryStandardIO(to: target)
            } catch {
                for listener in listeners { try? await listener.close() }
                // Nothing was carried: whoever waits for the stream's end hears the reason, and the promise
                // does not die unfulfilled with the client.
                client.standardIOPromise?.fail(error)
                throw error
            }
        }
        return client
    }

    /// Runs `attempt` (which starts the first session) until it succeeds, waiting the reconnect backoff between
    /// tries and saying before each wait when the next try comes. Gives up, closing the listeners, on an error
    /// that trying again cannot fix, or once ``Configuration/firstConnectionRetryTime`` has passed (a server that turns the
    /// client away for now is waited for at least ``Configuration/maximumRefusalWait``).
    func connectFirstSession(_ attempt: () async throws -> Void) async throws {
        var backoff = self.configuration.reconnect
        let start = NIODeadline.now()
        while true {
            do {
                try await attempt()
                return
            } catch {
                let refusal = (error as? SessionError)?.isRetryableRefusal ?? false
                let budget = refusal
                    ? self.configuration.firstConnectionRetryTime.map { max(self.configuration.maximumRefusalWait, $0) }
                    : self.configuration.firstConnectionRetryTime
                let remaining = budget.map { $0 - (NIODeadline.now() - start) }
                if Self.retryCannotFix(error) || remaining.map({ $0 <= .zero }) ?? false
                    || self.state.withLockedValue({ $0.stopping })
                {
                    await self.closeListeners(because: "\(error)")
                    throw error
                }
                var delay = backoff.nextDelay(now: .now())
                if refusal { delay = max(delay, (error as? SessionError)?.suggestedRetryDelay ?? .seconds(1)) }
                if let remaining { delay = min(delay, remaining) }
                self.logger.warning("\(error); retrying in \(delay.roundedText)")
                try await Task.sleep(nanoseconds: UInt64(max(0, delay.nanoseconds)))
            }
        }
    }

    /// Whether `error` ends the start-up at once: trying again cannot fix it (see ``SessionError/retryCannotFix``).
    static func retryCannotFix(_ error: any Error) -> Bool {
        switch error {
        case let error as SessionError: error.retryCannotFix
        case let error as TransportError: error.retryCannotFix
        case let error as AutomaticTransport.Failure: error.retryCannotFix
        case is ForwardingError: true
        default: false
        }
    }

    /// One try at the first session over `kind`: on success it carries the waiting connections and new ones.
    func startSession(over kind: TransportKind) async throws {
        var current = self.configuration
        current.transport = kind
        self.state.withLockedValue { $0.transport = kind }
        let session = try await Self.startSession(configuration: current, eventLoop: self.eventLoop, logger: self.logger)
        try await self.install(session, over: kind)
    }

    /// Makes `session` the one that carries new streams (and follows it), unless the client is stopping.
    private func install(_ session: SessionHandle, over kind: TransportKind) async throws {
        let (stopping, first) = self.state.withLockedValue { state in
            if !state.stopping {
                state.session = session
                state.currentSessionEnded = false
                state.sessionsStarted += 1
            }
            return (state.stopping, state.sessionsStarted == 1)
        }
        if stopping {
            _ = try? await session.shutdown(gracePeriod: .zero).get()
            throw SessionError.shutdown
        }
        if first {
            self.logger.info("tunnel established to \(self.configuration.server) over \(kind)")
        } else {
            self.logger.info("new session established to \(self.configuration.server) over \(kind)")
        }
        try await session.submit { session in
            self.watch(session)
            self.requestReverseListeners(on: session)
            self.releaseWaitingConnections(to: session)
        }.get()
    }

    /// Dials the transport and runs a new session's handshake on `eventLoop`.
    private static func startSession(
        configuration: Configuration,
        eventLoop: any EventLoop,
        logger: Logger
    ) async throws -> SessionHandle {
        // The session's cookies live as long as it does: every connection it resumes on sends them again.
        var options = configuration.transportOptions
        let cookies = SessionCookieJar()
        options.cookies = cookies
        // One per session, unless the configuration gives one (a path known to refuse binary bodies).
        let bodyShapeMemory = BodyShapeMemory(learnt: configuration.transportOptions.bodyShapeMemory?.learnt)
        options.bodyShapeMemory = bodyShapeMemory
        let dialer = ClientTransports.make(configuration.transport, options: options)
        let connection: NIOLoopBound<any TransportConnection>
        do {
            connection = try await dialer.connectBound(to: configuration.server, on: eventLoop).get()
        } catch let error as TransportError {
            throw SessionError.transport(error)
        }
        var sessionLogger = logger
        sessionLogger[metadataKey: "server"] = "\(configuration.server.hostHeader)"
        let finalLogger = sessionLogger
        let session = try await eventLoop.submit {
            let session = TunnelSession(
                role: .client,
                transport: connection.value,
                configuration: configuration.session,
                logger: finalLogger
            )
            session.cookies = cookies
            session.bodyShapeMemory = bodyShapeMemory
            if !configuration.reverseForwards.isEmpty {
                // Set before the handshake: the server may open a reverse stream as soon as it listens.
                session.connector = ReverseTargetConnector(
                    forwards: configuration.reverseForwards, connectTimeout: configuration.transportOptions.connectTimeout,
                    udpTimeout: configuration.udpTimeout
                )
            }
            session.start()
            return SessionHandle(session)
        }.get()
        _ = try await session.established.get()
        return session
    }

    /// Closes the listeners and the connections waiting for a session (the client gave up or stops).
    private func closeListeners(because reason: String) async {
        for listener in self.listeners.withLockedValue({ $0 }) { try? await listener.close() }
        try? await self.eventLoop.submit {
            let waiting = self.waiting.value
            self.waiting.value = []
            for connection in waiting {
                connection.channel.close(promise: nil)
                connection.completion(.unavailable("no tunnel to the server: \(reason)"))
            }
        }.get()
    }

    /// Hands the connections that waited for a session to `session` (on the client's loop).
    private func releaseWaitingConnections(to session: TunnelSession) {
        let waiting = self.waiting.value
        self.waiting.value = []
        if !waiting.isEmpty {
            self.logger.info("carrying the \(waiting.count) local connection\(waiting.count == 1 ? "" : "s") that waited for the tunnel")
        }
        for connection in waiting {
            session.carry(connection.channel, to: connection.target, completion: connection.completion)
            // The stream handler now sits behind the buffer: hand it what arrived meanwhile.
            connection.channel.pipeline.syncOperations.removeHandler(connection.buffer, promise: nil)
        }
    }

    // MARK: Reconnecting

    /// Follows `session` (on the client's loop): reconnects when its transport drops, and starts a new session
    /// when it ends for a reason a new session can overcome.
    private func watch(_ session: TunnelSession) {
        self.state.withLockedValue { state in
            state.backoff.connected(now: .now())
            state.disconnectedSince = nil
        }
        // The one notification for a new session (installed and connected), so waiters see both at once.
        self.changes.notify()
        session.onUpstreamModeChange = { [self] in self.changes.notify() }
        session.onStreamRemoved = { [self] in self.changes.notify() }
        session.onDetached = { [self] session, reason in
            // A session the server drains resumes too, to finish its streams; only the current one's drop counts.
            let current = self.state.withLockedValue { $0.session?.refers(to: session) == true }
            if current && !reason.isPlannedTransportMove {
                self.noteDrop(reason)
                self.state.withLockedValue { state in state.disconnectedSince = state.disconnectedSince ?? .now() }
            }
            self.scheduleResume(of: session, planned: reason.isPlannedTransportMove)
            self.changes.notify()
        }
        session.onResumed = { [self] session in
            self.state.withLockedValue { state in
                state.backoff.connected(now: .now())
                if state.session?.refers(to: session) == true { state.disconnectedSince = nil }
            }
            self.changes.notify()
        }
        session.onPeerGoingAway = { [self] session in self.peerGoingAway(session) }
        if session.isDetached {
            // It lost its connection before anyone was watching (between its handshake and this call).
            self.logger.info("the tunnel connection dropped just after the handshake; resuming")
            self.scheduleResume(of: session)
        }
        session.ended.assumeIsolated().whenSuccess { [self] reason in
            let statistics = session.statistics
            let (stopping, current) = self.state.withLockedValue { state in
                defer { state.draining.removeAll { $0.refers(to: session) } }
                state.bytesOfEndedSessions.sent += statistics.bytesSent
                state.bytesOfEndedSessions.received += statistics.bytesReceived
                let current = state.session?.refers(to: session) == true
                if current { state.currentSessionEnded = true }
                return (state.stopping, current)
            }
            guard !stopping else {
                if current { self.finish(reason) }
                return
            }
            // A session the server sent GOAWAY on has finished its streams; a new one carries the client already.
            guard current else {
                self.logger.info("the session the server is draining has finished its streams: \(reason)")
                return
            }
            if reason.isAuthenticationFailure {
                self.logger.error("the server no longer accepts the token: \(reason)")
                self.finish(reason)
                return
            }
            self.state.withLockedValue { state in state.disconnectedSince = state.disconnectedSince ?? .now() }
            self.changes.notify()
            let lost = session.statistics.streamsOpened > 0 ? " (its open streams were lost)" : ""
            if reason.isResumeRefusal {
                self.logger.warning("the server no longer has the session (it expired, or the server restarted)\(lost); starting a new session")
            } else {
                self.logger.warning("session ended: \(reason)\(lost); starting a new session")
            }
            self.scheduleNewSession()
        }
    }

    /// The server sent GOAWAY on `session` (it is draining, behind a load balancer perhaps): its open streams stay
    /// on it until they end; new local connections wait for a new session, which starts at once (on whichever
    /// server the address reaches now), so that no stream is refused in between.
    private func peerGoingAway(_ session: TunnelSession) {
        let wasCurrent = self.state.withLockedValue { state in
            guard state.session?.refers(to: session) == true, !state.stopping else { return false }
            state.session = nil
            state.draining.append(SessionHandle(session))
            // No session carries new streams until the next one is established.
            state.disconnectedSince = state.disconnectedSince ?? .now()
            return true
        }
        guard wasCurrent else { return }
        self.changes.notify()
        self.logger.info("the server is draining this session (GOAWAY): its \(session.streamCount) open stream\(session.streamCount == 1 ? "" : "s") stay on it; new ones go to a new session")
        self.startNewSession()
    }

    /// Starts a new session now; one that fails is tried again after the backoff (``scheduleNewSession(after:)``).
    private func startNewSession() {
        Task {
            do {
                try await self.startSession(over: self.currentTransport)
            } catch let error as SessionError where error.retryCannotFix {
                self.giveUp(error, session: nil)
            } catch SessionError.shutdown {
                return
            } catch {
                self.scheduleNewSession(after: error)
            }
        }
    }

    /// Counts a dropped connection; gives the transport up for the next fallback when it keeps failing.
    private func noteDrop(_ reason: SessionError) {
        let now = NIODeadline.now()
        let window = self.configuration.fallbackWindow
        let change = self.state.withLockedValue { state -> (from: TransportKind, to: TransportKind, drops: Int)? in
            state.recentDrops = state.recentDrops.filter { now - $0 < window } + [now]
            guard state.recentDrops.count >= self.configuration.failuresBeforeFallback, !state.fallbacks.isEmpty else {
                return nil
            }
            let from = state.transport
            state.transport = state.fallbacks.removeFirst()
            let drops = state.recentDrops.count
            state.recentDrops = []
            return (from, state.transport, drops)
        }
        if let change {
            self.changes.notify()
            self.logger.warning(
                "the \(change.from) transport dropped \(change.drops) times within \(window.roundedText) (last: \(reason)); giving it up for \(change.to)"
            )
        }
    }

    /// The delay before the next try, or nil when the client has been without a connection for longer than
    /// ``Configuration/reconnectRetryTime`` and gives up.
    private func nextDelay() -> TimeAmount? {
        self.state.withLockedValue { state in
            let delay = state.backoff.nextDelay(now: .now())
            if let limit = self.configuration.reconnectRetryTime, let since = state.disconnectedSince,
                NIODeadline.now() - since >= limit
            {
                return nil
            }
            return delay
        }
    }

    /// Ends the client after a failure that waiting cannot fix, or once the retry time ran out: closes the
    /// listeners and the session, and completes ``ended`` with `error`.
    private func giveUp(_ error: SessionError, session: TunnelSession?) {
        let limit = self.configuration.reconnectRetryTime
        if error.retryCannotFix {
            self.logger.error("giving up: \(error)")
        } else {
            self.logger.error("giving up: no connection to the server for \(limit?.roundedText ?? "ever") (the retry time): \(error)")
        }
        self.state.withLockedValue { $0.stopping = true }
        // Called on the session's loop: its handle goes to the task.
        let handle = session.map(SessionHandle.init)
        Task {
            await self.closeListeners(because: "\(error)")
            handle?.close(error)
            self.finish(error)
        }
    }

    /// Dials a new transport after the backoff delay and resumes `session` on it.
    private func scheduleResume(of session: TunnelSession, after lastError: SessionError? = nil, planned: Bool = false) {
        guard !self.state.withLockedValue({ $0.stopping }) else { return }
        guard let delay = self.nextDelay() else {
            self.giveUp(lastError ?? .transportClosed("the connection was lost"), session: session)
            return
        }
        if let lastError {
            self.logger.warning("reconnect failed: \(lastError); retrying in \(delay.roundedText)")
        } else if planned {
            self.logger.debug("connecting the new transport in \(delay.roundedText)")
        } else {
            self.logger.info("reconnecting in \(delay.roundedText) to resume the session")
        }
        let configuration = self.configuration
        self.eventLoop.assumeIsolated().scheduleTask(in: delay) { [self] in
            guard !self.state.withLockedValue({ $0.stopping }), session.isDetached else { return }
            let transport = self.state.withLockedValue { $0.transport }
            var options = configuration.transportOptions
            options.cookies = session.cookies
            options.bodyShapeMemory = session.bodyShapeMemory
            options.extraHeaders.append((TransportOptions.resumptionHeaderName, "1"))
            options.placement = SessionPlacement.tag(sessionID: session.sessionID)
            ClientTransports.make(transport, options: options)
                .connect(to: configuration.server, on: self.eventLoop)
                .assumeIsolated()
                .whenComplete { [self] result in
                    switch result {
                    case .success(let connection):
                        session.resume(on: connection)
                    case .failure(let error):
                        let sessionError = (error as? TransportError).map(SessionError.transport) ?? .transportClosed("\(error)")
                        if sessionError.retryCannotFix {
                            self.giveUp(sessionError, session: session)
                        } else {
                            self.scheduleResume(of: session, after: sessionError)
                        }
                    }
                }
        }
    }

    /// Starts a new session after the backoff delay, again until one is established.
    private func scheduleNewSession(after lastError: (any Error)? = nil) {
        guard !self.state.withLockedValue({ $0.stopping }) else { return }
        guard let delay = self.nextDelay() else {
            self.giveUp((lastError as? SessionError) ?? .transportClosed(lastError.map { "\($0)" } ?? "the session ended"), session: nil)
            return
        }
        if let lastError {
            self.logger.warning("new session failed: \(lastError); retrying in \(delay.roundedText)")
        } else {
            self.logger.info("starting a new session in \(delay.roundedText)")
        }
        self.eventLoop.scheduleTask(in: delay) { [self] in self.startNewSession() }
    }

    /// Moves the session to another transport without losing or reordering a byte of any stream: the current
    /// connection is closed and the session resumes on a new connection of `kind` (after the reconnect backoff's
    /// first delay). New sessions use `kind` too.
    public func switchTransport(to kind: TransportKind) {
        let current = self.state.withLockedValue { state in
            state.transport = kind
            return state.session
        }
        self.changes.notify()
        guard let session = current else { return }
        session.execute { session in
            guard session.transportKind != kind else { return }
            session.logger.info("moving the session to the \(kind) transport")
            session.dropTransport()
        }
    }

    /// Carries a listener's connection as a stream of the current session (on the sessions' loop); before the first
    /// session is established it waits for it (up to ``maximumWaitingConnections`` connections).
    func carry(_ channel: any Channel, to target: TargetAddress, completion: @escaping (StreamOpenResult) -> Void) {
        if let session = self.state.withLockedValue({ $0.session }) {
            session.session.carry(channel, to: target, completion: completion)
            return
        }
        guard self.waiting.value.count < Self.maximumWaitingConnections else {
            self.logger.warning("closing a local connection for \(target): \(Self.maximumWaitingConnections) connections already wait for the tunnel")
            channel.close(promise: nil)
            completion(.unavailable("too many connections wait for the tunnel"))
            return
        }
        let buffer = WaitingConnectionBuffer()
        do {
            try channel.pipeline.syncOperations.addHandler(buffer)
        } catch {
            channel.close(promise: nil)
            completion(.unavailable("the local connection closed"))
            return
        }
        if self.waiting.value.isEmpty { self.logger.info("a local connection for \(target) waits for the tunnel to the server") }
        self.waiting.value.append(WaitingConnection(channel: channel, target: target, completion: completion, buffer: buffer))
    }

    /// Sets the transports to fall back to when the current one keeps failing (see ``Configuration/fallbacks``).
    public func setFallbacks(_ kinds: [TransportKind]) {
        self.state.withLockedValue { state in state.fallbacks = kinds.filter { $0 != state.transport } }
    }

    /// The transport new connections use.
    public var currentTransport: TransportKind { self.state.withLockedValue { $0.transport } }

    /// Completes ``ended`` once.
    private func finish(_ reason: SessionError) {
        let first = self.state.withLockedValue { state in
            defer { state.finished = true }
            return !state.finished
        }
        if first {
            self.endedPromise.succeed(reason)
            self.changes.notify()
        }
    }

    /// Succeeds with the reason once the client has stopped: shut down, or refused for a wrong token.
    public var ended: EventLoopFuture<SessionError> { self.endedPromise.futureResult }

    /// Closes the local listeners, lets open streams finish for up to `gracePeriod`, then ends the session.
    public func shutdown(gracePeriod: TimeAmount = .seconds(5)) async {
        let (session, draining) = self.state.withLockedValue { state in
            state.stopping = true
            return (state.session, state.draining)
        }
        await self.closeListeners(because: "the client is shutting down")
        // The current session and those the server is draining finish their streams within the same grace period.
        let endings = ([session].compactMap { $0 } + draining).map { $0.shutdown(gracePeriod: gracePeriod) }
        for ending in endings { _ = try? await ending.get() }
        self.finish(.shutdown)
    }
}
