import CulvertCore
import CulvertTransport
import Logging
import NIOCore

/// Moving the session between transport connections: detaching when one is lost, resuming (client) or adopting
/// (server) on the next, and handing a resuming connection over to the session it names.
extension TunnelSession {
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
    func followUpstreamMode(of transport: any TransportConnection) {
        (transport as? any UpstreamModeReporting)?.onUpstreamModeChange = { [weak self] in self?.onUpstreamModeChange?() }
    }

    /// The resumption handshake finished: send the peer what it missed, then what waited, and carry on.
    func didResume(_ outcome: HandshakeStateMachine.Outcome, reply: Frame?, replay: [ByteBuffer]) {
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
    func handOver(_ outcome: HandshakeStateMachine.Outcome, welcome: Frame?) {
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
    func didDetach(_ reason: SessionError, expiry: NIODeadline?) {
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
}
