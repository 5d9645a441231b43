public import CulvertCore
public import NIOCore

/// A session as code on other threads holds it: its loop, and the session boxed to that loop, so that whatever
/// touches the session runs there. ``TunnelSession`` is not `Sendable`; the compiler checks that nothing reaches
/// one from another thread except through a handle.
public struct SessionHandle: Sendable {
    /// The loop the session lives on, with its streams.
    public let eventLoop: any EventLoop
    /// Succeeds, with the reason, when the session has ended.
    public let ended: EventLoopFuture<SessionError>
    /// Succeeds when the handshake completes; fails with ``SessionError`` when it does not.
    public let established: EventLoopFuture<HandshakeStateMachine.Outcome>
    /// Which session it is.
    let id: ObjectIdentifier
    private let boxed: NIOLoopBound<TunnelSession>

    /// A handle to `session`; made on the session's loop.
    init(_ session: TunnelSession) {
        self.eventLoop = session.eventLoop
        self.ended = session.ended
        self.established = session.established
        self.id = ObjectIdentifier(session)
        self.boxed = NIOLoopBound(session, eventLoop: session.eventLoop)
    }

    /// The session itself, on its loop.
    var session: TunnelSession { self.boxed.value }

    /// Whether this is the handle of `session`.
    func refers(to session: TunnelSession) -> Bool { self.id == ObjectIdentifier(session) }

    /// Runs `body` with the session on its loop.
    func execute(_ body: @escaping @Sendable (TunnelSession) -> Void) {
        let boxed = self.boxed
        self.eventLoop.execute { body(boxed.value) }
    }

    /// Runs `body` with the session on its loop, and gives what it returns.
    func submit<Result: Sendable>(_ body: @escaping @Sendable (TunnelSession) throws -> Result) -> EventLoopFuture<Result> {
        let boxed = self.boxed
        return self.eventLoop.submit { try body(boxed.value) }
    }

    /// What the session reports now, read on its loop. Throws only when the loop has shut down.
    public func snapshot() async throws -> SessionSnapshot {
        try await self.submit { $0.currentSnapshot }.get()
    }

    /// Sends GOAWAY, lets open streams finish for up to `gracePeriod`, then ends the session (see
    /// ``TunnelSession/shutdown(gracePeriod:)``).
    public func shutdown(gracePeriod: TimeAmount) -> EventLoopFuture<SessionError> {
        let boxed = self.boxed
        return self.eventLoop.flatSubmit { boxed.value.shutdown(gracePeriod: gracePeriod) }
    }

    /// Ends the session at once.
    public func close(_ reason: SessionError = .shutdown) {
        self.execute { $0.close(reason) }
    }
}

extension SessionHandle: Hashable {
    public static func == (lhs: SessionHandle, rhs: SessionHandle) -> Bool { lhs.id == rhs.id }
    public func hash(into hasher: inout Hasher) { hasher.combine(self.id) }
}
