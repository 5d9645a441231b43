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
        var session: TunnelSession
        var backoff: ReconnectBackoff
        /// The transport new connections use: the configured one until ``TunnelClient/switchTransport(to:)``.
        var transport: TransportKind
        /// When the current transport's connections dropped, within the fallback window.
        var recentDrops: [NIODeadline] = []
        var fallbacks: [TransportKind]
        var stopping = false
        var finished = false
        var sessionsStarted = 1
    }

    private let configuration: Configuration
    private let eventLoop: any EventLoop
    private let logger: Logger
    private let state: NIOLockedValueBox<State>
    private let listeners: NIOLockedValueBox<[any Channel]>
    private let endedPromise: EventLoopPromise<SessionError>

    /// The local address of each forward, in the order of ``Configuration/forwards``.
    public var listenerAddresses: [SocketAddress] {
        self.listeners.withLockedValue { $0.compactMap(\.localAddress) }
    }

    /// The session that carries the streams now (a new one after the server refused to resume the last).
    public var session: TunnelSession { self.state.withLockedValue { $0.session } }
    /// Sessions started so far (1 until the server restarts or refuses a resumption).
    public var sessionsStarted: Int { self.state.withLockedValue { $0.sessionsStarted } }

    private init(configuration: Configuration, eventLoop: any EventLoop, logger: Logger, session: TunnelSession) {
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.logger = logger
        self.state = NIOLockedValueBox(
            State(
                session: session, backoff: configuration.reconnect, transport: configuration.transport,
                fallbacks: configuration.fallbacks.filter { $0 != configuration.transport }
            )
        )
        self.listeners = NIOLockedValueBox([])
        self.endedPromise = eventLoop.makePromise()
    }

    deinit {
        // A client dropped without shutdown() (or one whose listeners failed to bind) has ended too.
        self.finish(.shutdown)
    }

    /// Connects, completes the session handshake, then opens the local listeners.
    /// - Throws: ``SessionError`` (unreachable server, wrong token, …) or ``ForwardingError`` (a port in use).
    public static func connect(
        configuration: Configuration,
        group: any EventLoopGroup,
        logger: Logger
    ) async throws -> TunnelClient {
        let eventLoop = group.next()
        let session = try await Self.startFirstSession(configuration: configuration, eventLoop: eventLoop, logger: logger)
        logger.info("tunnel established to \(configuration.server) over \(configuration.transport)")
        let client = TunnelClient(configuration: configuration, eventLoop: eventLoop, logger: logger, session: session)
        var listeners: [any Channel] = []
        do {
            for forward in configuration.forwards {
                listeners.append(try await client.listen(forward, group: group))
            }
        } catch {
            for listener in listeners { try? await listener.close() }
            _ = try? await session.shutdown(gracePeriod: .zero).get()
            throw error
        }
        client.listeners.withLockedValue { $0 = listeners }
        try await eventLoop.submit { client.watch(session) }.get()
        return client
    }

    /// Starts the first session, waiting and trying again while the server turns it away for now: a throttled
    /// address or a full server is a delay, not a reason to give up.
    private static func startFirstSession(
        configuration: Configuration,
        eventLoop: any EventLoop,
        logger: Logger
    ) async throws -> TunnelSession {
        var backoff = configuration.reconnect
        var waited = TimeAmount.zero
        while true {
            do {
                return try await Self.startSession(configuration: configuration, eventLoop: eventLoop, logger: logger)
            } catch let error as SessionError where error.isRetryableRefusal && waited < configuration.maximumRefusalWait {
                let delay = max(backoff.nextDelay(now: .now()), .seconds(1))
                logger.warning("\(error); trying again in \(Int(delay.seconds.rounded(.up))) s")
                try await Task.sleep(nanoseconds: UInt64(delay.nanoseconds))
                waited = waited + delay
            }
        }
    }

    /// Dials the transport and runs a new session's handshake on `eventLoop`.
    private static func startSession(
        configuration: Configuration,
        eventLoop: any EventLoop,
        logger: Logger
    ) async throws -> TunnelSession {
        let dialer = ClientTransports.make(configuration.transport, options: configuration.transportOptions)
        let connection: any TransportConnection
        do {
            connection = try await dialer.connect(to: configuration.server, on: eventLoop).get()
        } catch let error as TransportError {
            throw SessionError.transport(error)
        }
        var sessionLogger = logger
        sessionLogger[metadataKey: "server"] = "\(configuration.server.hostHeader)"
        let finalLogger = sessionLogger
        let session = try await eventLoop.submit {
            let session = TunnelSession(
                role: .client,
                transport: connection,
                configuration: configuration.session,
                logger: finalLogger
            )
            session.start()
            return session
        }.get()
        _ = try await session.established.get()
        return session
    }

    private func listen(_ forward: ForwardSpec, group: any EventLoopGroup) async throws -> any Channel {
        // Accepted connections live on the sessions' loop (every session of this client uses it).
        try await LocalPortListener.bind(forward, group: group, streamLoop: self.eventLoop, tunnel: self, logger: self.logger)
    }

    // MARK: Reconnecting

    /// Follows `session` (on the client's loop): reconnects when its transport drops, and starts a new session
    /// when it ends for a reason a new session can overcome.
    private func watch(_ session: TunnelSession) {
        self.state.withLockedValue { $0.backoff.connected(now: .now()) }
        session.onDetached = { [self] session, reason in
            self.noteDrop(reason)
            self.scheduleResume(of: session)
        }
        session.onResumed = { [self] _ in self.state.withLockedValue { $0.backoff.connected(now: .now()) } }
        if session.isDetached {
            // It lost its connection before anyone was watching (between its handshake and the listeners binding).
            self.logger.info("the tunnel connection dropped before the listeners were open; resuming")
            self.scheduleResume(of: session)
        }
        session.ended.whenSuccess { [self] reason in
            guard !self.state.withLockedValue({ $0.stopping }) else {
                self.finish(reason)
                return
            }
            if reason.isAuthenticationFailure {
                self.logger.error("the server no longer accepts the token: \(reason)")
                self.finish(reason)
                return
            }
            let lost = session.statistics.streamsOpened > 0 ? " (its open streams were lost)" : ""
            if reason.isResumeRefusal {
                self.logger.warning("the server no longer has the session (it expired, or the server restarted)\(lost); starting a new session")
            } else {
                self.logger.warning("session ended: \(reason)\(lost); starting a new session")
            }
            self.scheduleNewSession()
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
            self.logger.warning(
                "the \(change.from) transport dropped \(change.drops) times within \(window.seconds) s (last: \(reason)); giving it up for \(change.to)"
            )
        }
    }

    private func nextDelay() -> TimeAmount {
        self.state.withLockedValue { $0.backoff.nextDelay(now: .now()) }
    }

    /// Dials a new transport after the backoff delay and resumes `session` on it.
    private func scheduleResume(of session: TunnelSession) {
        guard !self.state.withLockedValue({ $0.stopping }) else { return }
        let delay = self.nextDelay()
        self.logger.info("reconnecting in \(delay.seconds) s to resume the session")
        let configuration = self.configuration
        self.eventLoop.scheduleTask(in: delay) { [self] in
            guard !self.state.withLockedValue({ $0.stopping }), session.isDetached else { return }
            let transport = self.state.withLockedValue { $0.transport }
            ClientTransports.make(transport, options: configuration.transportOptions)
                .connect(to: configuration.server, on: self.eventLoop)
                .whenComplete { [self] result in
                    switch result {
                    case .success(let connection):
                        session.resume(on: connection)
                    case .failure(let error):
                        self.logger.info("reconnect failed: \(error)")
                        self.scheduleResume(of: session)
                    }
                }
        }
    }

    /// Starts a new session after the backoff delay, again until one is established.
    private func scheduleNewSession() {
        guard !self.state.withLockedValue({ $0.stopping }) else { return }
        let delay = self.nextDelay()
        let configuration = self.configuration
        let eventLoop = self.eventLoop
        let logger = self.logger
        eventLoop.scheduleTask(in: delay) { [self] in
            Task {
                do {
                    var current = configuration
                    current.transport = self.state.withLockedValue { $0.transport }
                    let session = try await Self.startSession(configuration: current, eventLoop: eventLoop, logger: logger)
                    let stopping = self.state.withLockedValue { state in
                        if !state.stopping {
                            state.session = session
                            state.sessionsStarted += 1
                        }
                        return state.stopping
                    }
                    if stopping {
                        _ = try? await session.shutdown(gracePeriod: .zero).get()
                        return
                    }
                    logger.info("new session established to \(configuration.server) over \(configuration.transport)")
                    try await eventLoop.submit { self.watch(session) }.get()
                } catch let error as SessionError where error.isAuthenticationFailure {
                    logger.error("the server no longer accepts the token: \(error)")
                    self.finish(error)
                } catch {
                    logger.info("new session failed: \(error)")
                    self.scheduleNewSession()
                }
            }
        }
    }

    /// Moves the session to another transport without losing or reordering a byte of any stream: the current
    /// connection is closed and the session resumes on a new connection of `kind` (after the reconnect backoff's
    /// first delay). New sessions use `kind` too.
    public func switchTransport(to kind: TransportKind) {
        let session = self.state.withLockedValue { state in
            state.transport = kind
            return state.session
        }
        session.eventLoop.execute {
            guard session.transportKind != kind else { return }
            session.logger.info("moving the session to the \(kind) transport")
            session.dropTransport()
        }
    }

    /// Carries a listener's connection as a stream of the current session (on the sessions' loop).
    func carry(_ channel: any Channel, to target: TargetAddress, completion: @escaping (StreamOpenResult) -> Void) {
        self.session.carry(channel, to: target, completion: completion)
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
        if first { self.endedPromise.succeed(reason) }
    }

    /// Succeeds with the reason once the client has stopped: shut down, or refused for a wrong token.
    public var ended: EventLoopFuture<SessionError> { self.endedPromise.futureResult }

    /// Closes the local listeners, lets open streams finish for up to `gracePeriod`, then ends the session.
    public func shutdown(gracePeriod: TimeAmount = .seconds(5)) async {
        let session = self.state.withLockedValue { state in
            state.stopping = true
            return state.session
        }
        for listener in self.listeners.withLockedValue({ $0 }) { try? await listener.close() }
        _ = try? await session.shutdown(gracePeriod: gracePeriod).get()
        self.finish(.shutdown)
    }
}
