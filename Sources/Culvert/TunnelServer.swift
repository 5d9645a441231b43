import CulvertCore
public import CulvertTransport
public import Logging
import NIOConcurrencyHelpers
public import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// The server end of the tunnel: accepts transport connections, runs a session on each, and connects the streams
/// that clients open to their targets, within the allowlist.
public final class TunnelServer: Sendable {
    public struct Configuration: Sendable {
        public var listenHost: String
        public var listenPort: Int
        public var pathPrefix: String
        public var session: SessionConfiguration
        public var allowlist: Allowlist
        public var targetConnectTimeout: TimeAmount
        /// Hold times, idle timeout and response limits of the chunked and polling transports.
        public var http: HTTPTransportServerSettings
        /// When set, HTTPS and WSS instead of plain HTTP.
        public var tls: ServerTLS?
        /// Sessions at once (handshaking, established, or waiting to be resumed); past it new ones are refused with
        /// GOAWAY `overloaded`.
        public var maximumSessions: Int = 1024
        /// Failed authentications an address may have per minute before its new sessions are refused unheard.
        public var authenticationFailuresPerMinute: Int = 10
        /// Where clients may open reverse listeners (`-R`); empty (the default): nowhere.
        public var reverseAllowlist = ReverseAllowlist()
        /// A UDP stream (to a UDP target, or a flow of a reverse UDP listener) with no datagram either way for this
        /// long ends.
        public var udpTimeout: TimeAmount = .seconds(30)
        /// Named users with their own tokens and rights (`--users`); nil: the shared token is all the server knows.
        public var users: [String: UserAccount]?

        /// The access rules this configuration starts with.
        public var accessRules: AccessRules {
            AccessRules(
                allowlist: self.allowlist, reverseAllowlist: self.reverseAllowlist, users: self.users,
                maximumSessions: self.maximumSessions, authenticationFailuresPerMinute: self.authenticationFailuresPerMinute
            )
        }

        public init(
            listenHost: String,
            listenPort: Int,
            pathPrefix: String = ServerEndpoint.defaultPathPrefix,
            session: SessionConfiguration,
            allowlist: Allowlist,
            targetConnectTimeout: TimeAmount = .seconds(10),
            http: HTTPTransportServerSettings = .init(),
            tls: ServerTLS? = nil
        ) {
            self.tls = tls
            self.listenHost = listenHost
            self.listenPort = listenPort
            self.pathPrefix = pathPrefix
            self.session = session
            self.allowlist = allowlist
            self.targetConnectTimeout = targetConnectTimeout
            self.http = http
        }
    }

    private let transportServer: TransportServer
    /// The allowlists and users in force; ``updateAccessRules(_:)`` replaces them.
    public let accessControl: AccessControl
    private let metrics: TunnelMetrics?
    /// Every session, by identity (each read on its own loop).
    let sessions: NIOLockedValueBox<[ObjectIdentifier: SessionHandle]>
    private let memoryTrimming = NIOLockedValueBox<RepeatedTask?>(nil)
    /// Set when ``shutdown(gracePeriod:)`` begins: HELLOs that would start a new session are refused from then on
    /// (read once per HELLO).
    private let drains: NIOLockedValueBox<Bool>
    /// Established sessions that lost their transport and wait for their client to resume them.
    private let waitingForClient: NIOLockedValueBox<Set<ObjectIdentifier>>
    private let throttle: NIOLockedValueBox<AuthenticationThrottle>

    /// The bound address (useful when listening on port 0).
    public var localAddress: SocketAddress? { self.transportServer.localAddress }
    /// TCP connections the listener has accepted.
    public var acceptedConnections: Int { self.transportServer.acceptedConnections }
    /// Chunked and polling transport connections the server holds now.
    public var httpConnectionCount: Int { self.transportServer.httpConnectionCount }
    /// Sessions currently running.
    public var activeSessions: Int { self.sessions.withLockedValue { $0.count } }
    /// Sessions that lost their transport and wait for their client to resume them (``changes`` is notified).
    public var sessionsWaitingForClient: Int { self.waitingForClient.withLockedValue { $0.count } }
    /// Whether the server drains with its listener open for its chunked and polling sessions (see ``shutdown(gracePeriod:)``).
    public var isDrainingWithListenerOpen: Bool { self.transportServer.isDraining }
    /// Notified after a session starts or ends: await a condition on ``activeSessions`` with
    /// ``StateChangeSignal/wait(timeout:until:)``.
    public let changes: StateChangeSignal

    private init(
        transportServer: TransportServer, sessions: NIOLockedValueBox<[ObjectIdentifier: SessionHandle]>, changes: StateChangeSignal,
        accessControl: AccessControl, metrics: TunnelMetrics?, drains: NIOLockedValueBox<Bool>,
        waitingForClient: NIOLockedValueBox<Set<ObjectIdentifier>>, throttle: NIOLockedValueBox<AuthenticationThrottle>
    ) {
        self.throttle = throttle
        self.waitingForClient = waitingForClient
        self.drains = drains
        self.metrics = metrics
        self.accessControl = accessControl
        self.transportServer = transportServer
        self.sessions = sessions
        self.changes = changes
    }

    /// Binds the listener and starts serving.
    public static func start(
        configuration: Configuration,
        group: any EventLoopGroup,
        logger: Logger
    ) async throws -> TunnelServer {
        let sessions = NIOLockedValueBox<[ObjectIdentifier: SessionHandle]>([:])
        let changes = StateChangeSignal()
        // Established sessions by id, for resumption.
        let resumable = NIOLockedValueBox<[[UInt8]: ResumableSession]>([:])
        let access = AccessControl(configuration.accessRules)
        let drains = NIOLockedValueBox(false)
        let waitingForClient = NIOLockedValueBox<Set<ObjectIdentifier>>([])
        let sessionConfiguration = {
            var session = configuration.session
            // Always: a reload may bring users where there were none.
            session.users = access.userLookup()
            // A draining server takes back its own sessions (a client whose connection dropped resumes to finish
            // its streams), and no new one; nor does a server at its session limit, where a resumption is not a new
            // session (the one it resumes holds its place).
            session.refusesNewSession = {
                if drains.withLockedValue({ $0 }) {
                    return "this server is draining (shutting down) and takes no new sessions; connect again, to another server"
                }
                let maximum = access.rules.maximumSessions
                guard sessions.withLockedValue({ $0.count }) > maximum else { return nil }
                return "the server has its maximum of \(maximum) sessions (--max-sessions); try again later"
            }
            return session
        }()
        let connector = {
            var connector = TargetConnector(allowlist: configuration.allowlist, connectTimeout: configuration.targetConnectTimeout)
            connector.udpTimeout = configuration.udpTimeout
            connector.access = access
            return connector
        }()
        let reverseListeners = ReverseListenerHost(
            allowlist: { user in access.rules.reverseAllowlist(for: user) }, group: group, udpTimeout: configuration.udpTimeout
        )
        let throttle = NIOLockedValueBox(AuthenticationThrottle(limit: configuration.authenticationFailuresPerMinute, window: .seconds(60)))
        // The loop of each session a client may resume, by placement tag: a chunked or polling connection that
        // resumes one is made there.
        let placements = NIOLockedValueBox<[String: any EventLoop]>([:])
        var transportConfiguration = TransportServer.Configuration(
            host: configuration.listenHost,
            port: configuration.listenPort,
            pathPrefix: configuration.pathPrefix,
            http: configuration.http,
            tls: configuration.tls
        )
        transportConfiguration.placement = { tag in placements.withLockedValue { $0[tag] } }
        transportConfiguration.onHTTPConnectionForgotten = { changes.notify() }
        let listenAddress = "\(configuration.listenHost):\(configuration.listenPort)"
        let transportServer: TransportServer
        do {
            transportServer = try await TransportServer.bind(
                configuration: transportConfiguration,
                group: group
            ) { connection in
                var sessionLogger = logger
                sessionLogger[metadataKey: "peer"] = "\(connection.peerDescription)"
                let transportKind = connection.kind
                let session = TunnelSession(
                    role: .server,
                    transport: connection,
                    configuration: sessionConfiguration,
                    logger: sessionLogger
                )
                session.connector = connector
                reverseListeners.serve(session)
                session.resumeLookup = { id in
                    let found = resumable.withLockedValue { $0[id] }
                    if found == nil {
                        session.logger.info("a client asked to resume a session this server does not have (expired, or the server restarted)")
                    }
                    return found
                }
                let key = ObjectIdentifier(session)
                let handle = SessionHandle(session)
                let address = connection.peerAddress?.ipAddress ?? "unknown"
                let sessionCount = sessions.withLockedValue { table in
                    table[key] = handle
                    return table.count
                }
                changes.notify()
                session.start()
                // A connection is an authentication attempt from its first message (the HELLO, sent before any
                // proof): counted then, not when its proof has been checked, so concurrent attempts cannot outrun
                // the limit. A connection that has sent nothing has proved nothing and costs nothing to check: a
                // client's probes connect every transport at once and send their HELLO one at a time.
                let attempt = AuthenticationAttempt(address: address, throttle: throttle)
                session.admitFirstMessage = {
                    guard let (wait, limit) = throttle.withLockedValue({ throttle in
                        throttle.beginAttempt(address, now: .now()).map { ($0, throttle.limit) }
                    }) else {
                        attempt.begun()
                        return nil
                    }
                    session.logger.debug("refused unheard: too many authentication attempts from \(address)")
                    configuration.session.metrics?.throttledConnection()
                    return (
                        .throttled,
                        "earlier attempts from \(address) failed to authenticate (the server allows \(limit) a minute); try again in \(Int(wait.seconds.rounded(.up))) s"
                    )
                }
                // Far past the limit, refused unheard: room is kept only for the sessions that wait for their
                // clients to resume them (the HELLO then says whether it is one; see refusesNewSession).
                let maximumSessions = access.rules.maximumSessions
                if sessionCount > maximumSessions + waitingForClient.withLockedValue({ $0.count }) {
                    session.logger.warning("refused a session unheard: the server has its maximum of \(maximumSessions) sessions (--max-sessions)")
                    session.refuse(.overloaded, "the server has its maximum of \(maximumSessions) sessions (--max-sessions); try again later")
                }
                // Whether the session was established, and as which named user (whose session count it holds).
                let wasEstablished = NIOLockedValueBox<(Bool, user: String?, probe: Bool)>((false, nil, false))
                // The session's own futures, on its loop (this runs there too).
                session.established.assumeIsolated().whenSuccess { outcome in
                    // A probe took no session of its user's, carries nothing and ends at once: it gets no target,
                    // no reverse listener, cannot be resumed, and is closed if its client forgets to.
                    if outcome.isProbe {
                        wasEstablished.withLockedValue { $0 = (true, nil, true) }
                        session.connector = nil
                        session.onListenRequested = nil
                        attempt.finish(failed: false)
                        session.eventLoop.assumeIsolated().scheduleTask(in: configuration.session.handshakeTimeout) { session.close() }
                        return
                    }
                    wasEstablished.withLockedValue { $0 = (true, outcome.user, false) }
                    let user = outcome.user
                    if let user {
                        var userConnector = connector
                        userConnector.user = user
                        session.connector = userConnector
                    }
                    session.onDetached = { session, _ in
                        waitingForClient.withLockedValue { _ = $0.insert(key) }
                        changes.notify()
                        // While it waits for its client, the session is one the user's limit may end to make room
                        // for the client knocking (the same one, restarted, most often).
                        guard let user else { return }
                        access.sessionDetached(user: user, id: key) {
                            handle.execute { session in
                                guard session.isDetached else { return }
                                session.logger.info("user \(user) is at its session limit and a client knocks: ending this session, which waits for its client")
                                session.close(.replaced(user: user))
                            }
                        }
                    }
                    session.onResumed = { _ in
                        waitingForClient.withLockedValue { _ = $0.remove(key) }
                        changes.notify()
                        if let user { access.sessionResumedOrEnded(user: user, id: key) }
                    }
                    attempt.finish(failed: false)
                    resumable.withLockedValue {
                        $0[outcome.sessionID] = ResumableSession(
                            session: handle, key: outcome.sessionKey, capabilities: outcome.capabilities, sessionIDString: outcome.sessionIDString
                        )
                    }
                    placements.withLockedValue { $0[SessionPlacement.tag(sessionID: outcome.sessionID)] = session.eventLoop }
                    session.logger.info("session established over \(transportKind)\(outcome.user.map { " for user \($0)" } ?? "")")
                }
                session.ended.assumeIsolated().whenSuccess { reason in
                    sessions.withLockedValue { _ = $0.removeValue(forKey: key) }
                    waitingForClient.withLockedValue { _ = $0.remove(key) }
                    if let user = wasEstablished.withLockedValue({ $0.user }) {
                        access.sessionResumedOrEnded(user: user, id: key)
                        access.release(user: user)
                    }
                    changes.notify()
                    if reason.isAuthenticationFailure { configuration.session.metrics?.authenticationFailed() }
                    if attempt.finish(failed: reason.isAuthenticationFailure), reason.isAuthenticationFailure,
                        throttle.withLockedValue({ $0.retryAfter(address, now: .now()) }) != nil
                    {
                        configuration.session.metrics?.addressThrottled()
                        session.logger.warning("\(address) failed to authenticate \(throttle.withLockedValue { $0.limit }) times within a minute: refusing it for a while")
                    }
                    if case .refused = reason { return }
                    let forgotten: [UInt8]? = resumable.withLockedValue { table in
                        guard let id = table.first(where: { $0.value.session == handle })?.key else { return nil }
                        table.removeValue(forKey: id)
                        return id
                    }
                    if let id = forgotten {
                        placements.withLockedValue { _ = $0.removeValue(forKey: SessionPlacement.tag(sessionID: id)) }
                    }
                    if case .handedOver = reason { return }
                    if reason.isAuthenticationFailure {
                        session.logger.warning("refused \(address): \(reason)")
                        return
                    }
                    let (established, _, probe) = wasEstablished.withLockedValue { $0 }
                    guard established, !probe else {
                        // A probe that gave up, a scanner, a client that went away mid-handshake: not news.
                        session.logger.debug("connection ended before a session was established: \(reason)")
                        return
                    }
                    let stats = session.statistics
                    let streams = stats.streamsOpened == 1 ? "1 stream" : "\(stats.streamsOpened) streams"
                    let resumed = switch session.resumptions {
                    case 0: "never resumed"
                    case 1: "resumed once"
                    case let count: "resumed \(count) times"
                    }
                    session.logger.info(
                        "session ended: \(reason) (sent \(stats.bytesSent) B, received \(stats.bytesReceived) B, \(streams), \(resumed))"
                    )
                }
            }.get()
        } catch {
            throw ForwardingError.bindFailed(address: listenAddress, reason: describeBindError(error))
        }
        connector.listenPort.withLockedValue { $0 = transportServer.localAddress?.port }
        let server = TunnelServer(transportServer: transportServer, sessions: sessions, changes: changes, accessControl: access, metrics: configuration.session.metrics, drains: drains, waitingForClient: waitingForClient, throttle: throttle)
        server.startReturningFreedMemory(on: group.next())
        return server
    }

    /// Brings the metrics up to date for a scrape: every session reports the bytes it moved since it last did, and
    /// the receive memory all sessions have committed is recorded.
    public func collectMetrics() async {
        guard let metrics = self.metrics else { return }
        let sessions = self.sessions.withLockedValue { Array($0.values) }
        var memory = 0
        for session in sessions {
            memory += (try? await session.submit { $0.reportTraffic() }.get()) ?? 0
        }
        metrics.sessionMemory(bytes: memory)
    }

    /// Puts reloaded rules in force: new sessions and new streams follow them at once; open sessions and streams
    /// stay, even where the new rules would refuse them.
    public func updateAccessRules(_ rules: AccessRules) {
        self.accessControl.replace(rules)
        self.throttle.withLockedValue { $0.limit = rules.authenticationFailuresPerMinute }
    }

    /// glibc keeps memory freed by other threads in their arenas: after a burst (an attack, a crowd of clients
    /// leaving) the process would stay at its peak size. Every 10 s in which connections came and went, freed
    /// memory is handed back to the system.
    private func startReturningFreedMemory(on eventLoop: any EventLoop) {
        #if canImport(Glibc)
        let lastSeen = NIOLockedValueBox(-1)
        let task = eventLoop.scheduleRepeatedTask(initialDelay: .seconds(10), delay: .seconds(10)) { [transportServer = self.transportServer] _ in
            let accepted = transportServer.acceptedConnections
            guard lastSeen.withLockedValue({ seen in defer { seen = accepted }; return seen != accepted }) else { return }
            _ = glibcMallocTrim(0)
        }
        self.memoryTrimming.withLockedValue { $0 = task }
        #endif
    }

    /// Stops accepting new sessions, sends GOAWAY to every session, lets open streams finish for up to
    /// `gracePeriod`, then closes what is left.
    ///
    /// The listener closes at once unless chunked or polling sessions are open, or sessions wait for their client
    /// to resume them: their next requests need it, so it stays open for them until they end, answering 503 to
    /// anything that would start a new session (a resumption, marked ``TransportOptions/resumptionHeaderName``,
    /// passes), and refusing a HELLO for a new session that comes anyway.
    public func shutdown(gracePeriod: TimeAmount = .seconds(5)) async {
        self.memoryTrimming.withLockedValue { $0?.cancel() }
        self.drains.withLockedValue { $0 = true }
        let sessions = self.sessions.withLockedValue { Array($0.values) }
        let keepsListening =
            gracePeriod > .zero && (self.transportServer.httpConnectionCount > 0 || self.sessionsWaitingForClient > 0)
        if keepsListening {
            self.transportServer.startDraining()
            self.changes.notify()
        } else {
            try? await self.transportServer.close().get()
        }
        // All sessions drain at once, so shutdown takes one grace period, not one per session.
        let deadline = NIODeadline.now() + gracePeriod
        var shutDown = Set(sessions.map(\.id))
        let endings = sessions.map { $0.shutdown(gracePeriod: gracePeriod) }
        for ending in endings { _ = try? await ending.get() }
        if keepsListening {
            // What the ended sessions said last (the GOAWAY, the close record) may wait in their chunked and polling
            // connections for the clients' next requests: the port stays open for those, within the grace period.
            let remaining = deadline - NIODeadline.now()
            if remaining > .zero {
                _ = await self.changes.wait(timeout: .nanoseconds(remaining.nanoseconds)) { self.transportServer.httpConnectionCount == 0 }
            }
            try? await self.transportServer.close().get()
        }
        // Connections the open listener took meanwhile (a resumption, a HELLO being refused) end within the same
        // grace period: shutdown returns with no session left.
        while true {
            let late = self.sessions.withLockedValue { table in table.filter { !shutDown.contains($0.key) } }
            guard !late.isEmpty else { break }
            shutDown.formUnion(late.keys)
            let remaining = max(.zero, deadline - NIODeadline.now())
            for ending in late.values.map({ $0.shutdown(gracePeriod: remaining) }) { _ = try? await ending.get() }
        }
    }
}

/// One phrase for why a listener could not bind, saying what to do where there is something to do.
public func describeBindError(_ error: any Error) -> String {
    if let ioError = error as? IOError {
        switch ioError.errnoCode {
        case 98: return "address already in use (another process listens there; pick another port)"
        case 13: return "permission denied (ports below 1024 need root)"
        case 99: return "address not available on this machine"
        default: return String(cString: strerror(ioError.errnoCode))
        }
    }
    if error is SocketAddressError {
        return "the host name does not resolve (no such host, or no DNS answer)"
    }
    return "\(error)"
}

/// One connection's place among its address's authentication attempts: taken when the connection starts, given back
/// once, when its session is established (or has handed its connection to the session it resumed) or has ended.
private final class AuthenticationAttempt: Sendable {
    private let address: String
    private let throttle: NIOLockedValueBox<AuthenticationThrottle>
    private let underWay = NIOLockedValueBox(false)

    init(address: String, throttle: NIOLockedValueBox<AuthenticationThrottle>) {
        self.address = address
        self.throttle = throttle
    }

    func begun() {
        self.underWay.withLockedValue { $0 = true }
    }

    /// Gives the place back (recording a failure when `failed`); returns whether this call did.
    @discardableResult
    func finish(failed: Bool) -> Bool {
        let wasUnderWay = self.underWay.withLockedValue { underWay in
            defer { underWay = false }
            return underWay
        }
        guard wasUnderWay else { return false }
        self.throttle.withLockedValue { $0.finishAttempt(self.address, failed: failed, now: .now()) }
        return true
    }
}

#if canImport(Glibc)
/// glibc's `malloc_trim` (malloc.h, which the Glibc module does not export): returns freed heap memory to the system.
@_silgen_name("malloc_trim")
private func glibcMallocTrim(_ pad: Int) -> Int32
#endif
