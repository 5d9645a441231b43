public import NIOCore

/// One tunnel session's protocol logic, for either role, as a pure state machine: the handshake, the established
/// session's multiplexer, sequencer and keepalive, detaching when the transport is lost, resuming on a new one, going
/// away and ending.
///
/// ```
/// handshaking ──► established ──► goingAway ──► ended
///      │              │  ▲   ▲        │  ▲
///      │   lost       ▼  │   │ resumed│  │ resumed (if going away)
///      │           detached ─► resuming ◄┘        (server: handshaking ──► ended(handedOver) when the HELLO
///      ▼                                           resumes another session and its proof verifies)
///    ended
/// ```
/// A session going away stays going away through a lost transport and its resumption, so that its open streams
/// still finish; one that this side shut down says its GOAWAY again once resumed (``goAwayAfterResumption``).
/// The driver feeds it events (frames, a lost transport, timer firings, the time passed in) and performs the
/// returned action; it reads no clock and owns no socket. The data path's calls (``receive(_:)`` for DATA, the
/// ``withEstablished(_:)`` accessors for sending) cost one switch or one optional check each.
public struct SessionStateMachine: Sendable {
    public enum Role: Sendable {
        case client
        case server
    }

    public struct Settings: Sendable {
        public var token: String?
        public var authenticationRequired: Bool
        /// Client: the named user it authenticates as (`--user`); nil for the shared token.
        public var user: String?
        /// Server: its named users (`--users`); nil when it has only the shared token.
        public var users: UserLookup?
        /// This side asks for (client) or agrees to (server) per-stream compression.
        public var compression: Bool
        /// Client: the session is a transport probe (``Capabilities/probe``).
        public var isProbe = false
        /// End-to-end protection (``Capabilities/sealed``): offered, and then required of the peer. Off only where
        /// both sides are started with it off.
        public var sealing = true
        /// Server: asked for each HELLO that would start a new session (not a resumption); a message refuses it
        /// with GOAWAY `overloaded` (a draining server takes back its own sessions only).
        public var refusesNewSession: (@Sendable () -> String?)?
        public var mux: MuxConfiguration
        public var handshakeTimeout: TimeAmount
        public var keepaliveInterval: TimeAmount
        public var keepaliveTimeout: TimeAmount
        /// Whether an established session survives the loss of its transport.
        public var resumption: Bool
        /// Server: how long a detached session waits for its client.
        public var detachedGracePeriod: TimeAmount

        public init(
            token: String?, authenticationRequired: Bool, user: String? = nil, users: UserLookup? = nil,
            compression: Bool, mux: MuxConfiguration,
            handshakeTimeout: TimeAmount, keepaliveInterval: TimeAmount, keepaliveTimeout: TimeAmount,
            resumption: Bool, detachedGracePeriod: TimeAmount
        ) {
            self.token = token
            self.authenticationRequired = authenticationRequired
            self.user = user
            self.users = users
            self.compression = compression
            self.mux = mux
            self.handshakeTimeout = handshakeTimeout
            self.keepaliveInterval = keepaliveInterval
            self.keepaliveTimeout = keepaliveTimeout
            self.resumption = resumption
            self.detachedGracePeriod = detachedGracePeriod
        }
    }

    /// What an established session carries through every transport it uses.
    public struct Established: Sendable {
        public var mux: MuxStateMachine
        public var sequencer: ReliableSequencer
        public var keepalive: KeepaliveStateMachine
        public let sessionID: [UInt8]
        public let sessionKey: [UInt8]
        public let capabilities: Capabilities
        /// This side shut down: its GOAWAY is said again on every resumption (it may have been lost with the old
        /// transport; it is not a sequenced frame, and a peer going away already ignores it).
        var shutDownHere = false
    }

    /// The timers the driver runs for the machine; when one fires the driver calls ``timerFired(_:now:)``, which
    /// checks the deadline itself (a timer that outlived its state does nothing).
    public enum Timer: Hashable, Sendable {
        /// The handshake (or a resumption's handshake) must finish by then.
        case handshake
        /// Server: a detached session not resumed by then ends.
        case detachedExpiry
    }

    @usableFromInline enum State: Sendable {
        case handshaking(HandshakeStateMachine, deadline: NIODeadline)
        /// Server: this connection's HELLO resumes another session, whose proof is checked here.
        case resumingAnother(HandshakeStateMachine, deadline: NIODeadline)
        /// Server: refused before its handshake; nothing more is read.
        case refusing
        /// Stream frames flow (``session`` holds the established session).
        case established
        /// No new streams; open ones finish.
        case goingAway
        /// The transport was lost; streams stay open. `expiry` only on the server. A session that was going away
        /// (its mux says so) stays going away through detach and resumption: its streams still finish.
        case detached(expiry: NIODeadline?)
        /// Client: the resumption handshake runs on a new transport.
        case resuming(HandshakeStateMachine, deadline: NIODeadline)
        case ended(SessionEndReason)
    }

    /// What the driver must do after a frame or an event.
    public enum Action {
        case none
        /// Queue this frame with the batch and send the batch now.
        case sendNow(Frame)
        /// Send this frame at once, ahead of what waits in the batch (a resumption's handshake frames).
        case sendAhead(Frame)
        /// The handshake completed: send `reply` (if any) and carry streams from now on.
        case established(HandshakeStateMachine.Outcome, reply: Frame?)
        /// A resumption completed: send `reply` (if any), then `replay` (what the peer missed), then the batch.
        case resumed(HandshakeStateMachine.Outcome, reply: Frame?, replay: [ByteBuffer])
        /// Server: this connection proved it resumes the session the driver looked up; hand it over. Ended.
        case handOver(HandshakeStateMachine.Outcome, welcome: Frame?)
        /// Server: the HELLO would start a new session and ``Settings/refusesNewSession`` refuses it: refuse the
        /// connection with this GOAWAY (``refuse(_:_:)``), as a refusal before the handshake is.
        case refuseSession(GoAwayCode, String)
        /// Server: a HELLO asks to resume this session id: look it up and call ``resumptionLookedUp(_:hello:now:)``.
        case lookUpResumption([UInt8])
        /// A frame for the multiplexer's streams.
        case stream(MuxInboundAction)
        /// Server: the client asks for a reverse listener on `address` (answer with LISTEN_OK or LISTEN_FAIL).
        case listenRequested(requestID: UInt32, address: TargetAddress)
        /// Client: the server bound the reverse listener of `requestID` on `port`.
        case listening(requestID: UInt32, port: UInt16)
        /// Client: the server refused the reverse listener of `requestID`.
        case listenRefused(requestID: UInt32, reason: OpenFailReason, message: String)
        /// The peer acknowledged frames; `mayResumeReads` when the replay buffer fell below half its limit.
        case acknowledged(mayResumeReads: Bool)
        /// The peer goes away: no new streams; end once the open ones finished.
        case peerGoingAway
        /// The transport is gone (or must be dropped): close it; the session waits to be resumed, streams open.
        /// `expiry`: when a detached server session ends (schedule ``Timer/detachedExpiry``).
        case detach(SessionEndReason, expiry: NIODeadline?)
        /// Client: no answer to the resumption in time: close its transport (the session detaches again).
        case abandonResumption
        /// Send `reply` (if any, at once) and end the session.
        case end(SessionEndReason, reply: Frame?)
        /// A protocol violation: drop the batch, send this GOAWAY alone, end.
        case protocolFailure(goAway: Frame, SessionEndReason)
    }

    public let role: Role
    public let settings: Settings
    /// Usable from inlinable code so that the queries below are inlined into the driver: called across modules on
    /// a machine held in a class's stored property, each would first copy the whole machine (retaining everything in
    /// it), several times per message.
    @usableFromInline private(set) var state: State {
        didSet { if case .ended = self.state { self.session = nil } }
    }
    /// The established session, in the states that have one (established, going away, detached, resuming) and nil
    /// in all others. It is kept beside ``state`` rather than in its cases so that the data path changes it where it
    /// lies: a payload of an enum case can only be changed by taking it out and putting it back, which moved its
    /// 389 bytes (and the whole state's) several times per frame, or by binding a copy, which copied the stream table.
    @usableFromInline var session: Established?
    /// Times the session was resumed on a new transport connection.
    public private(set) var resumptions = 0

    public init(role: Role, settings: Settings, now: NIODeadline) {
        self.role = role
        self.settings = settings
        let handshakeRole: HandshakeStateMachine.Role =
            switch role {
            case .client: .client(token: settings.token, user: settings.user)
            case .server:
                .server(token: settings.token, authenticationRequired: settings.authenticationRequired, users: settings.users)
            }
        self.state = .handshaking(
            HandshakeStateMachine(
                role: handshakeRole,
                capabilities: Capabilities(settings.compression ? [.compression] : [])
                    .union(settings.isProbe ? [.probe] : []).union(settings.sealing ? [.sealed] : []),
                maximumDataPayload: UInt32(settings.mux.maximumDataPayload)
            ),
            deadline: now + settings.handshakeTimeout
        )
    }

    // MARK: Reading the state

    /// Established (or going away) with a transport attached: stream frames flow.
    @inlinable public var isCarryingStreams: Bool {
        switch self.state {
        case .established, .goingAway: true
        default: false
        }
    }

    /// The session's established state exists (it may be detached or resuming).
    @inlinable public var hasSession: Bool {
        switch self.state {
        case .established, .goingAway, .detached, .resuming: true
        default: false
        }
    }

    @inlinable public var isDetached: Bool {
        switch self.state {
        case .detached, .resuming: true
        default: false
        }
    }

    @inlinable public var isResuming: Bool {
        if case .resuming = self.state { return true }
        return false
    }

    /// No new streams; the open ones finish (a detached or resuming session too, once either side said GOAWAY).
    @inlinable public var isGoingAway: Bool {
        switch self.state {
        case .goingAway: true
        case .detached, .resuming: self.session?.mux.isGoingAway ?? false
        default: false
        }
    }

    @inlinable public var isEnded: Bool {
        if case .ended = self.state { return true }
        return false
    }

    /// Server: refused before its handshake.
    @inlinable public var isRefusing: Bool {
        if case .refusing = self.state { return true }
        return false
    }

    /// New streams may be opened (the session exists and is not going away).
    @inlinable public var acceptsNewStreams: Bool {
        switch self.state {
        case .established: true
        case .detached, .resuming: !(self.session?.mux.isGoingAway ?? true)
        default: false
        }
    }

    public var sessionID: [UInt8]? { self.session?.sessionID }
    public var sessionKey: [UInt8]? { self.session?.sessionKey }
    @inlinable public var compressionEnabled: Bool { self.readEstablished { $0.capabilities.contains(.compression) } ?? false }

    /// Runs `body` on the established state in place, whatever the transport is doing; nil when there is none.
    /// Inlinable, so that the driver's calls are specialized for their result: unspecialized, each call looked up
    /// the metadata of its result's type at run time.
    @inlinable public mutating func withEstablished<Result>(_ body: (inout Established) throws -> Result) rethrows -> Result? {
        guard self.session != nil else { return nil }
        return try body(&self.session!)
    }

    /// Where the established state's stream table lies in memory (nil with none). Tests check that the data path
    /// changes the table in place: a copy would cost time and memory in proportion to the open streams, per frame.
    package var streamTableAddress: UInt? { self.session?.mux.streamTableAddress }

    // MARK: The data path's queries, in place

    // These are `mutating` only so that a driver holding the machine in a class's stored property reaches the state
    // in place: a non-mutating call there first copies the whole machine (retaining everything it holds, and
    // releasing it after), because the call could reach the class and change the property meanwhile.

    /// How many bytes stream `id` may send now: its credit and the session's (0 with no established state).
    public mutating func sendableBytes(_ id: StreamID) -> Int {
        self.withEstablished { $0.mux.sendableBytes(id) } ?? 0
    }

    /// Stream `id`'s credit when the session has room for what the stream would read: it carries streams, and less
    /// than `replayLimit` bytes wait for the peer's acknowledgement. Nil when the session has no room.
    public mutating func creditIfSessionHasRoom(_ id: StreamID, replayLimit: Int) -> Int? {
        guard self.isCarryingStreams else { return nil }
        return self.withEstablished { $0.sequencer.replayBytes < replayLimit ? $0.mux.sendableBytes(id) : nil } ?? nil
    }

    /// Whether an acknowledgement of what was received is due now, and whether any is waiting at all; nil with no
    /// established state.
    public mutating func acknowledgementState() -> (due: Bool, waiting: Bool)? {
        self.withEstablished { (due: $0.sequencer.ackDueNow, waiting: $0.sequencer.hasUnacknowledged) }
    }

    /// ``compressionEnabled``, in place.
    public mutating func compressesData() -> Bool {
        self.withEstablished { $0.capabilities.contains(.compression) } ?? false
    }

    /// Reads the established state; nil when there is none.
    @inlinable public func readEstablished<Result>(_ body: (Established) -> Result) -> Result? {
        guard let e = self.session else { return nil }
        return body(e)
    }

    // MARK: Events

    /// The session starts on its first transport: the client's HELLO (the server waits for one).
    public mutating func start() -> Frame? {
        guard case .client = self.role, case .handshaking(var handshake, let deadline) = self.state else { return nil }
        let hello = handshake.start()
        self.state = .handshaking(handshake, deadline: deadline)
        return hello
    }

    /// A frame arrived on the current transport.
    /// `now` is read only when the frame moves the session between states (never for a frame of an established
    /// session), so the data path reads no clock.
    public mutating func receive(_ frame: Frame, now: @autoclosure () -> NIODeadline) -> Action {
        switch self.state {
        case .established:
            return self.receiveEstablished(frame, goingAway: false, now: now)
        case .goingAway:
            return self.receiveEstablished(frame, goingAway: true, now: now)
        case .handshaking(var handshake, let deadline):
            if case .server = self.role, case .hello(let hello) = frame {
                if !hello.resumeSessionID.isEmpty { return .lookUpResumption(hello.resumeSessionID) }
                if let refusal = self.settings.refusesNewSession?() { return .refuseSession(.overloaded, refusal) }
            }
            let action = handshake.receive(frame)
            self.state = .handshaking(handshake, deadline: deadline)
            return self.handshakeFinished(action, now: now())
        case .resumingAnother(var handshake, let deadline):
            switch handshake.receive(frame) {
            case .send(let reply):
                self.state = .resumingAnother(handshake, deadline: deadline)
                return .sendAhead(reply)
            case .established(let outcome, let welcome):
                self.state = .ended(.handedOver)
                return .handOver(outcome, welcome: welcome)
            case .fail(let error, let reply):
                self.state = .ended(.handshake(error))
                return .end(.handshake(error), reply: reply)
            }
        case .resuming(var handshake, let deadline):
            switch handshake.receive(frame) {
            case .send(let reply):
                self.state = .resuming(handshake, deadline: deadline)
                return .sendAhead(reply)
            case .established(let outcome, let reply):
                return self.completeResumption(outcome, reply: reply, goingAway: self.session!.mux.isGoingAway, now: now())
            case .fail(.refusedByPeer(let code, let message), _) where code == .overloaded || code == .throttled:
                // The server is busy, not refusing the session: it keeps it; wait and try again.
                self.state = .detached(expiry: nil)
                return .detach(.handshake(.refusedByPeer(code, message)), expiry: nil)
            case .fail(let error, let reply):
                self.state = .ended(.handshake(error))
                return .end(.handshake(error), reply: reply)
            }
        case .refusing, .detached, .ended:
            return .none
        }
    }

    /// Server: the session a resumption HELLO named, as the driver found it (`nil`: this server does not have it).
    /// The proof is then checked on this connection with that session's key.
    public mutating func resumptionLookedUp(
        _ target: (sessionKey: [UInt8], capabilities: Capabilities)?,
        hello: Frame,
        now: NIODeadline
    ) -> Action {
        guard case .handshaking(var handshake, let deadline) = self.state, case .hello(let body) = hello else { return .none }
        guard let target else {
            let action = handshake.receive(hello)
            self.state = .handshaking(handshake, deadline: deadline)
            return self.handshakeFinished(action, now: now)
        }
        var resumption = HandshakeStateMachine(
            role: .resumingServer(sessionID: body.resumeSessionID, sessionKey: target.sessionKey, received: 0),
            capabilities: target.capabilities,
            maximumDataPayload: UInt32(self.settings.mux.maximumDataPayload)
        )
        let action = resumption.receive(hello)
        self.state = .resumingAnother(resumption, deadline: deadline)
        guard case .send(let reply) = action else {
            if case .fail(let error, let reply) = action {
                self.state = .ended(.handshake(error))
                return .end(.handshake(error), reply: reply)
            }
            return .none
        }
        return .sendAhead(reply)
    }

    /// The frames cannot be decoded: a protocol violation.
    public mutating func decodingFailed(_ code: GoAwayCode, _ message: String) -> Action {
        self.protocolFailure(code, message)
    }

    /// The current transport closed or failed (`reason` says how): an established session detaches, anything else ends.
    public mutating func transportLost(_ reason: SessionEndReason, now: NIODeadline) -> Action {
        switch self.state {
        case .established where self.settings.resumption, .goingAway where self.settings.resumption,
            .resuming where self.settings.resumption:
            let expiry: NIODeadline? = self.role == .server ? now + self.settings.detachedGracePeriod : nil
            self.state = .detached(expiry: expiry)
            return .detach(reason, expiry: expiry)
        case .ended, .detached:
            return .none
        default:
            self.state = .ended(reason)
            return .end(reason, reply: nil)
        }
    }

    /// Client: a new transport connection for the detached session: the resumption's HELLO, to send at once; nil
    /// when the session is not detached (close the connection).
    public mutating func resume(now: NIODeadline) -> Frame? {
        guard case .detached = self.state, let e = self.session else { return nil }
        var handshake = HandshakeStateMachine(
            role: .resumingClient(sessionID: e.sessionID, sessionKey: e.sessionKey, received: e.sequencer.received),
            capabilities: e.capabilities.intersection([.compression, .sealed]),
            maximumDataPayload: UInt32(self.settings.mux.maximumDataPayload)
        )
        let hello = handshake.start()
        self.state = .resuming(handshake, deadline: now + self.settings.handshakeTimeout)
        return hello
    }

    /// Server: a connection on which a client proved it resumes this session takes over. Returns what to send:
    /// the WELCOME (with what this side has received), then what the peer missed.
    public mutating func adopt(_ outcome: HandshakeStateMachine.Outcome, welcome: Frame?, now: NIODeadline) -> Action {
        switch self.state {
        case .established, .detached, .goingAway:
            break
        default:
            return .none
        }
        guard let e = self.session else { return .none }
        var reply = welcome
        if case .welcome(var body)? = welcome {
            body.received = e.sequencer.received
            reply = .welcome(body)
        }
        return self.completeResumption(outcome, reply: reply, goingAway: e.mux.isGoingAway, now: now)
    }

    /// The keepalive timer ticked: maybe ping; a transport whose pong is overdue is dead.
    public mutating func keepaliveTick(now: NIODeadline) -> Action {
        let action: KeepaliveStateMachine.Action? = self.withCarryingEstablished { $0.keepalive.tick(now: now) }
        switch action {
        case .sendPing(let id)?:
            return .sendNow(.ping(id))
        case .declareDead(let silentFor)?:
            return self.transportLost(.keepaliveTimeout(seconds: Double(silentFor.nanoseconds) / 1e9), now: now)
        case .none?, nil:
            return .none
        }
    }

    /// Measures the round trip (for a live status): a PING to send, unless one is still unanswered or the session
    /// carries no streams now. Its PONG's arrival sets ``roundTrip``.
    public mutating func measureRoundTrip(now: NIODeadline) -> Action {
        guard let id = self.withCarryingEstablished({ $0.keepalive.startMeasurement(now: now) }) ?? nil else { return .none }
        return .sendNow(.ping(id))
    }

    /// The last round-trip time measured, or nil before any (or when no session is established).
    public var roundTrip: TimeAmount? { self.session?.keepalive.roundTrip }

    /// A timer the driver scheduled fired.
    public mutating func timerFired(_ timer: Timer, now: NIODeadline) -> Action {
        switch (timer, self.state) {
        case (.handshake, .handshaking(_, let deadline)) where now >= deadline,
            (.handshake, .resumingAnother(_, let deadline)) where now >= deadline:
            let reason = SessionEndReason.handshakeTimedOut(seconds: Double(self.settings.handshakeTimeout.nanoseconds) / 1e9)
            self.state = .ended(reason)
            return .end(reason, reply: nil)
        case (.handshake, .resuming(_, let deadline)) where now >= deadline:
            return .abandonResumption
        case (.detachedExpiry, .detached(let expiry?)) where now >= expiry:
            let reason = SessionEndReason.detachedExpired(seconds: Double(self.settings.detachedGracePeriod.nanoseconds) / 1e9)
            self.state = .ended(reason)
            return .end(reason, reply: nil)
        default:
            return .none
        }
    }

    /// Ends the session gracefully: a GOAWAY to send, no new streams. A session not (or no longer) carrying streams
    /// ends at once.
    public mutating func shutdown() -> Action {
        switch self.state {
        case .established:
            self.session!.mux.beginGoingAway()
            self.session!.shutDownHere = true
            self.state = .goingAway
            return .sendNow(Self.shutdownGoAway)
        case .detached, .resuming:
            // No transport to say it on: the GOAWAY goes out when the session is resumed, and the open streams
            // have the same grace period to finish as on a connected session.
            self.session!.mux.beginGoingAway()
            self.session!.shutDownHere = true
            return .none
        case .goingAway, .ended:
            return .none
        default:
            self.state = .ended(.shutdown)
            return .end(.shutdown, reply: nil)
        }
    }

    private static let shutdownGoAway = Frame.goAway(code: .normal, message: "shutting down")

    /// Right after a resumption: the GOAWAY to say again because this side has shut down (while detached, it could
    /// not say it; before, it may have been lost with the old transport).
    public var goAwayAfterResumption: Frame? {
        guard case .goingAway = self.state, self.session?.shutDownHere == true else { return nil }
        return Self.shutdownGoAway
    }

    /// Server: refuses the session before its handshake with a GOAWAY; nothing more is read.
    public mutating func refuse(_ code: GoAwayCode, _ message: String) -> Frame? {
        guard case .handshaking = self.state else { return nil }
        self.state = .refusing
        return .goAway(code: code, message: message)
    }

    /// Ends the session now. Returns false when it had ended already.
    public mutating func end(_ reason: SessionEndReason) -> Bool {
        if case .ended = self.state { return false }
        self.state = .ended(reason)
        return true
    }

    // MARK: Established frames

    /// A frame of an established session (or one going away), changing ``session`` where it lies.
    private mutating func receiveEstablished(_ frame: Frame, goingAway: Bool, now: () -> NIODeadline) -> Action {
        self.session!.keepalive.receivedAnything()
        if frame.type.isReliable {
            self.session!.sequencer.recordReceived(byteCount: frame.wireSize)
            switch frame {
            case .listen(let id, let address):
                guard self.role == .server else { return self.protocolFailure(.protocolError, "LISTEN sent by the server") }
                return .listenRequested(requestID: id, address: address)
            case .listenOK(let id, let port):
                guard self.role == .client else { return self.protocolFailure(.protocolError, "LISTEN_OK sent by the client") }
                return .listening(requestID: id, port: port)
            case .listenFail(let id, let reason, let message):
                guard self.role == .client else { return self.protocolFailure(.protocolError, "LISTEN_FAIL sent by the client") }
                return .listenRefused(requestID: id, reason: reason, message: message)
            default:
                return .stream(self.session!.mux.receive(frame))
            }
        }
        switch frame {
        case .ack(let received):
            do {
                try self.session!.sequencer.receiveAck(received)
            } catch {
                return self.protocolFailure(.protocolError, error.description)
            }
            return .acknowledged(mayResumeReads: self.session!.sequencer.replayBytes < self.session!.mux.configuration.sessionMemoryLimit / 2)
        case .ping(let value):
            return .sendNow(.pong(value))
        case .pong(let value) where KeepaliveStateMachine.isMeasurement(value):
            // The one clock read a pong costs: a measurement comes about once a second, not per message.
            self.session!.keepalive.receivedMeasurementPong(value, now: now())
            return .none
        case .pong(let value):
            self.session!.keepalive.receivedPong(value)
            return .none
        case .goAway(let code, let message):
            if code == .normal {
                guard !goingAway else { return .none }
                self.session!.mux.beginGoingAway()
                self.state = .goingAway
                return .peerGoingAway
            }
            self.state = .ended(.peerWentAway(code, message))
            return .end(.peerWentAway(code, message), reply: nil)
        default:
            return self.protocolFailure(.protocolError, "\(frame.type) frame after the handshake")
        }
    }

    private mutating func protocolFailure(_ code: GoAwayCode, _ message: String) -> Action {
        if case .ended = self.state { return .none }
        self.state = .ended(.protocolViolation(code, message))
        return .protocolFailure(goAway: .goAway(code: code, message: message), .protocolViolation(code, message))
    }

    private mutating func handshakeFinished(_ action: HandshakeStateMachine.Action, now: NIODeadline) -> Action {
        switch action {
        case .send(let reply):
            return .sendNow(reply)
        case .established(let outcome, let reply):
            let sequencer = ReliableSequencer()
            self.session = Established(
                    mux: MuxStateMachine(
                        role: self.role == .client ? .client : .server,
                        configuration: self.settings.mux,
                        peerMaximumDataPayload: Int(outcome.peerMaximumDataPayload)
                    ),
                    sequencer: sequencer,
                    keepalive: self.makeKeepalive(now: now),
                    sessionID: outcome.sessionID,
                    sessionKey: outcome.sessionKey,
                    capabilities: outcome.capabilities
                )
            self.state = .established
            return .established(outcome, reply: reply)
        case .fail(let error, let reply):
            self.state = .ended(.handshake(error))
            return .end(.handshake(error), reply: reply)
        }
    }

    private mutating func completeResumption(
        _ outcome: HandshakeStateMachine.Outcome, reply: Frame?, goingAway: Bool, now: NIODeadline
    ) -> Action {
        let replay: [ByteBuffer]
        do {
            replay = try self.session!.sequencer.framesToReplay(peerReceived: outcome.peerReceived)
        } catch {
            self.state = .ended(.protocolViolation(.protocolError, "resumption: \(error)"))
            return .protocolFailure(
                goAway: .goAway(code: .protocolError, message: "resumption: \(error)"),
                .protocolViolation(.protocolError, "resumption: \(error)")
            )
        }
        self.session!.keepalive = self.makeKeepalive(now: now)
        self.state = goingAway ? .goingAway : .established
        self.resumptions += 1
        return .resumed(outcome, reply: reply, replay: replay)
    }

    private func makeKeepalive(now: NIODeadline) -> KeepaliveStateMachine {
        KeepaliveStateMachine(interval: self.settings.keepaliveInterval, timeout: self.settings.keepaliveTimeout, now: now)
    }

    /// `body` on the established state only while a transport carries it (not detached or resuming).
    private mutating func withCarryingEstablished<Result>(_ body: (inout Established) -> Result) -> Result? {
        guard self.isCarryingStreams else { return nil }
        return self.withEstablished(body)
    }
}

extension Frame {
    /// Encoded size in bytes (exact for DATA, close enough for the rest, which only feeds ACK pacing).
    public var wireSize: Int {
        if case .data(_, _, let payload) = self { return FrameEncoder.headerLength + payload.readableBytes }
        return FrameEncoder.headerLength + 16
    }
}
