import CulvertCore
import CulvertTransport
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Server side of `-R`: binds the listeners a session's client asks for (LISTEN), within `--allow-reverse`, and
/// carries each connection they accept back to the client as a stream whose target is the listener's address.
/// The listeners belong to the session: they stay while it is detached and resuming, and close when it ends, so a
/// client that comes back as a new session can bind the same ports at once. A port that a live session holds is
/// refused to another with that reason; one held by a detached session (its client is gone, and its grace period has
/// not run out) or one that is ending is handed to the new session that asks for it, since that is the client come back as a new session
/// (chisel users meet "address already in use" there). A port another process holds is refused with that reason.
struct ReverseListenerHost: Sendable {
    /// At most this many reverse listeners per session.
    static let maximumPerSession = 64

    /// A bound reverse listener, by its requested address, and the session it belongs to.
    private struct Holder {
        let session: SessionHandle
        let channel: any Channel
    }

    /// Where reverse listeners may open, for each session's user, as the server's rules say now.
    let allowlist: @Sendable (_ user: String?) -> ReverseAllowlist
    let group: any EventLoopGroup
    /// How long a reverse UDP listener's flow lasts without a datagram.
    let udpTimeout: TimeAmount
    /// Every session's listeners with a fixed port, by "host|port" as requested.
    private let holders = NIOLockedValueBox<[String: Holder]>([:])

    init(
        allowlist: @escaping @Sendable (_ user: String?) -> ReverseAllowlist, group: any EventLoopGroup,
        udpTimeout: TimeAmount = .seconds(30)
    ) {
        self.allowlist = allowlist
        self.group = group
        self.udpTimeout = udpTimeout
    }

    /// Answers `session`'s LISTEN requests from now on. On the session's loop.
    func serve(_ session: TunnelSession) {
        let logger = session.logger
        let listeners = NIOLockedValueBox<(channels: [any Channel], ended: Bool)>(([], false))
        session.ended.whenComplete { _ in
            let channels = listeners.withLockedValue { state in
                state.ended = true
                defer { state.channels = [] }
                return state.channels
            }
            for channel in channels { channel.close(promise: nil) }
            if !channels.isEmpty { logger.info("closed the session's \(channels.count) reverse listener\(channels.count == 1 ? "" : "s")") }
        }
        let allowlistForUser = self.allowlist
        session.onListenRequested = { session, requestID, address in
            let allowlist = allowlistForUser(session.user)
            guard !allowlist.entries.isEmpty else {
                session.logger.info("refused a reverse listener on \(address): this server allows none")
                session.answerListen(requestID, .failure(StreamOpenFailure(.notAllowed, "the server allows no reverse listeners (start it with --allow-reverse \(address))")))
                return
            }
            guard allowlist.permits(address) else {
                session.logger.warning("refused a reverse listener on \(address): not in --allow-reverse")
                session.answerListen(requestID, .failure(StreamOpenFailure(.notAllowed, "the server does not allow a reverse listener on \(address) (--allow-reverse)")))
                return
            }
            guard listeners.withLockedValue({ $0.channels.count }) < Self.maximumPerSession else {
                session.answerListen(requestID, .failure(StreamOpenFailure(.other, "the session has its maximum of \(Self.maximumPerSession) reverse listeners")))
                return
            }
            let handle = SessionHandle(session)
            self.takeOver(address, for: handle) { refusal in
                if let refusal {
                    handle.session.answerListen(requestID, .failure(refusal))
                    return
                }
                self.bind(address, requestID: requestID, for: handle, listeners: listeners)
            }
        }
    }

    /// Frees `address` for `session` when a detached session holds it, and says (on `session`'s loop) whether it may
    /// go on: nil, or why not.
    private func takeOver(_ address: TargetAddress, for session: SessionHandle, then next: @escaping @Sendable (StreamOpenFailure?) -> Void) {
        guard address.port != 0, let holder = self.holders.withLockedValue({ $0[Self.key(address)] }), holder.session != session else {
            next(nil)
            return
        }
        holder.session.submit { holder in
            let releases = holder.releasesReverseListeners
            if releases {
                holder.logger.info("handing reverse listener \(address) to a new session: this one is detached (its client is gone) or ending")
            }
            return releases
        }.whenComplete { result in
            let releases = (try? result.get()) ?? true
            guard releases else {
                session.execute { session in
                    session.logger.warning("refused a reverse listener on \(address): another session holds it")
                    next(StreamOpenFailure(.other, "\(address) on the server is already a reverse listener of another session"))
                }
                return
            }
            holder.channel.close().whenComplete { _ in session.eventLoop.execute { next(nil) } }
        }
    }

    private static func key(_ address: TargetAddress) -> String {
        "\(address.host.lowercased())|\(address.port)|\(address.transport)"
    }

    private func bind(
        _ address: TargetAddress, requestID: UInt32, for session: SessionHandle,
        listeners: NIOLockedValueBox<(channels: [any Channel], ended: Bool)>
    ) {
        let holders = self.holders
            let bound: EventLoopFuture<any Channel>
        if address.transport == .udp {
            let listen = ListenAddress(host: address.host, port: address.port)
            let (loop, timeout, logger) = (session.eventLoop, self.udpTimeout, session.session.logger)
            let promise = loop.makePromise(of: (any Channel).self)
            promise.completeWithTask {
                try await DatagramFlowListener.bind(listen, target: address, loop: loop, tunnel: session, idleTimeout: timeout, logger: logger)
            }
            bound = promise.futureResult
        } else {
            bound = ServerBootstrap.streamListener(group: self.group, streamLoop: session.eventLoop)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // On the session's loop (the listener's streams live there).
                    let logger = session.session.logger
                    session.carry(channel, to: address) { result in
                        switch result {
                        case .opened: break
                        case .refused(_, let message): logger.info("reverse connection on \(address) refused by the client: \(message)")
                        case .unavailable(let reason): logger.info("reverse connection on \(address) not carried: \(reason)")
                        }
                    }
                }
            }
                .bind(host: address.host, port: address.port)
        }
        bound
            .whenComplete { result in
                session.execute { tunnel in
                    switch result {
                    case .success(let channel):
                        let kept = listeners.withLockedValue { state in
                            if !state.ended { state.channels.append(channel) }
                            return !state.ended
                        }
                        guard kept else {
                            channel.close(promise: nil)
                            return
                        }
                        if address.port != 0 {
                            let key = Self.key(address)
                            holders.withLockedValue { $0[key] = Holder(session: session, channel: channel) }
                            channel.closeFuture.whenComplete { _ in
                                holders.withLockedValue { table in if table[key]?.channel === channel { table.removeValue(forKey: key) } }
                            }
                        }
                        let port = channel.localAddress?.port ?? address.port
                        tunnel.logger.info("reverse listener on \(channel.localAddress.map(\.displayText) ?? "\(address)") for the client's -R")
                        tunnel.answerListen(requestID, .success(port))
                    case .failure(let error):
                        let reason = describeBindError(error)
                        tunnel.logger.warning("cannot open a reverse listener on \(address): \(reason)")
                        tunnel.answerListen(requestID, .failure(StreamOpenFailure(.other, "the server cannot listen on \(address): \(reason)")))
                    }
                }
            }
    }
}
