import CulvertCore
public import CulvertTransport
public import Logging
public import NIOCore
import NIOPosix

/// Finds which transports really get through to a server, by running a real session handshake over each (so a
/// proxy that answers an upgrade and then relays nothing, or holds a streaming response back, shows up as a
/// failure), and picks the cheapest that works: websocket, then connect, then chunked, then polling.
///
/// Probes run at the same time; each gets a time that scales with the path's round trip (measured by a TCP connect
/// to the first hop), between a floor and a ceiling, so that a blocked transport costs seconds, not tens of them.
public enum TransportNegotiator {
    /// Transports in order of preference.
    public static let preference: [TransportKind] = [.websocket, .connect, .chunked, .polling]

    /// Probes every transport to `server` and returns the results in order of preference.
    public static func probe(
        server: ServerEndpoint,
        options: TransportOptions,
        session: SessionConfiguration,
        group: any EventLoopGroup,
        logger: Logger,
        floor: TimeAmount = .seconds(2),
        ceiling: TimeAmount = .seconds(8)
    ) async -> [ProbeResult] {
        var results: [ProbeResult] = []
        for await result in Self.results(
            server: server, options: options, session: session, group: group, logger: logger, floor: floor, ceiling: ceiling
        ) {
            results.append(result)
        }
        return results.sorted { Self.rank($0.transport) < Self.rank($1.transport) }
    }

    /// The position of `kind` in ``preference`` (lower is better).
    public static func rank(_ kind: TransportKind) -> Int {
        Self.preference.firstIndex(of: kind)!
    }

    /// Probes every transport to `server` at once and yields each result as soon as it is known, so that a
    /// caller can start on the first that works and move to a better one when its probe passes.
    public static func results(
        server: ServerEndpoint,
        options: TransportOptions,
        session: SessionConfiguration,
        group: any EventLoopGroup,
        logger: Logger,
        floor: TimeAmount = .seconds(2),
        ceiling: TimeAmount = .seconds(8)
    ) -> AsyncStream<ProbeResult> {
        AsyncStream { continuation in
            let task = Task {
                await Self.runProbes(
                    server: server, options: options, session: session, group: group, logger: logger,
                    floor: floor, ceiling: ceiling
                ) { continuation.yield($0) }
                continuation.finish()
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    private static func runProbes(
        server: ServerEndpoint,
        options: TransportOptions,
        session: SessionConfiguration,
        group: any EventLoopGroup,
        logger: Logger,
        floor: TimeAmount,
        ceiling: TimeAmount,
        each: @escaping @Sendable (ProbeResult) -> Void
    ) async {
        let rtt = await Self.firstRoundTrip(route: HTTPRoute(endpoint: server, options: options), group: group)
        let timeout = TimeAmount.nanoseconds(min(max(floor.nanoseconds, (rtt ?? floor).nanoseconds * 8), ceiling.nanoseconds))
        var probeOptions = options
        probeOptions.connectTimeout = timeout
        // A path that buffers request bodies must be noticed (and chunked fall back to short POSTs upstream)
        // within the probe, not after it gave up.
        probeOptions.http.upstreamAckTimeout = .nanoseconds(min(options.http.upstreamAckTimeout.nanoseconds, timeout.nanoseconds / 3))
        var probeSession = session
        probeSession.handshakeTimeout = timeout
        probeSession.resumption = false
        let finalOptions = probeOptions
        let finalSession = probeSession
        let gate = AuthenticationGate()
        await withTaskGroup(of: ProbeResult.self) { tasks in
            for kind in Self.preference {
                tasks.addTask {
                    await Self.probe(
                        kind, server: server, options: finalOptions, session: finalSession, gate: gate, group: group, logger: logger
                    )
                }
            }
            for await result in tasks { each(result) }
        }
    }

    /// The transport `auto` uses given `results`: the first that works in order of preference.
    public static func choice(_ results: [ProbeResult]) -> TransportKind? {
        Self.preference.first { kind in results.contains { $0.transport == kind && $0.works } }
    }

    private static func probe(
        _ kind: TransportKind,
        server: ServerEndpoint,
        options: TransportOptions,
        session: SessionConfiguration,
        gate: AuthenticationGate,
        group: any EventLoopGroup,
        logger: Logger
    ) async -> ProbeResult {
        let start = NIODeadline.now()
        let eventLoop = group.next()
        var transportEstablished = false
        var holdsGate = false
        // The chunked transport's downstream is a streaming response: it must arrive as it is sent.
        let delivery = kind == .chunked
            ? StreamingDeliveryProbe.runConfirmed(
                route: HTTPRoute(endpoint: server, options: options),
                timeout: options.connectTimeout, on: eventLoop
            ) : nil
        do {
            // Each probe is a session of its own: its requests keep its own cookies (a balancer's stickiness).
            var probeOptions = options
            probeOptions.cookies = SessionCookieJar()
            let connection = try await ClientTransports.make(kind, options: probeOptions).connectBound(to: server, on: eventLoop).get()
            transportEstablished = true
            if case .refused(let reason) = await gate.enter() {
                eventLoop.execute { connection.value.close() }
                return ProbeResult(failed: kind, .authentication, reason, since: start)
            }
            holdsGate = true
            let handshakeStart = NIODeadline.now()
            let tunnel = try await eventLoop.submit {
                var probeSession = session
                probeSession.isProbe = true
                let tunnel = TunnelSession(role: .client, transport: connection.value, configuration: probeSession, logger: logger)
                tunnel.start()
                return SessionHandle(tunnel)
            }.get()
            // A held-back delivery probe answers sooner than the handshake's timeout: end the probe then.
            delivery?.whenSuccess { outcome in
                if Self.heldBack(outcome.verdict) != nil { tunnel.close() }
            }
            do {
                _ = try await tunnel.established.get()
            } catch let error as SessionError where error.isAuthenticationFailure {
                gate.refused("\(error) (refused over \(kind); the proof was not sent again over the others)")
                throw error
            }
            gate.accepted()
            holdsGate = false
            let handshake = NIODeadline.now() - handshakeStart
            let (shortRequests, bodyShape, bodyLimit) = try await eventLoop.submit {
                (connection.value.upstreamUsesShortRequests, connection.value.bodyShape, connection.value.bodyByteLimit)
            }.get()
            _ = try? await tunnel.shutdown(gracePeriod: .zero).get()
            if let delivery, let held = Self.heldBack(try await delivery.get().verdict) {
                return ProbeResult(failed: kind, .responseBuffered, held, since: start)
            }
            var details: [String] = []
            if shortRequests { details.append("the path holds or cuts streaming request bodies: upstream goes as short POSTs") }
            if let bodyShape, bodyShape != options.http.bodyShapes.first || bodyLimit != nil {
                details.append(
                    "the path's content rules refused \(options.http.bodyShapes.first?.contentType ?? "binary") bodies: they go as \(bodyShape.contentType)"
                        + (bodyLimit.map { " of at most \($0 / 1024) KiB" } ?? "")
                )
            }
            return ProbeResult(
                transport: kind, works: true, failure: nil,
                detail: details.joined(separator: "; "),
                roundTripMilliseconds: Double(handshake.nanoseconds) / 2e6,
                elapsedMilliseconds: Double((NIODeadline.now() - start).nanoseconds) / 1e6,
                upstream: kind == .polling || shortRequests ? .shortRequests : .stream,
                bodyShape: bodyShape
            )
        } catch {
            if holdsGate { gate.inconclusive() }
            // A handshake that never came down a held-back streaming response: the delivery probe says why.
            if let delivery, let outcome = try? await delivery.get(), let held = Self.heldBack(outcome.verdict) {
                return ProbeResult(failed: kind, .responseBuffered, held, since: start)
            }
            return ProbeResult(
                failed: kind, ProbeFailure.classify(error, kind: kind, transportEstablished: transportEstablished), "\(error)",
                since: start, retryCannotFix: TunnelClient.retryCannotFix(error)
            )
        }
    }

    /// What the path did to the streaming probe response, when it did not deliver it as sent.
    private static func heldBack(_ verdict: StreamingDeliveryProbe.Verdict) -> String? {
        switch verdict {
        case .asSent:
            return nil
        case .heldUntilEnd:
            return "the path held the streaming probe response until it ended (a buffering proxy)"
        case .bursts(let together, let gaps):
            let interval = StreamingDeliveryProbe.defaultInterval.nanoseconds / 1_000_000
            return "the path delivered the streaming probe response in bursts (\(together) of \(gaps) chunks sent \(interval) ms apart arrived together)"
        }
    }

    /// The round trip of the path: half the time of a first HTTP request to the server through the proxy (a TCP
    /// connect and one exchange), so that a proxy's own delay counts; when that has no answer within a second (a
    /// proxy that refuses plain requests, or a blocked path), the time of a TCP connect to the first hop.
    private static func firstRoundTrip(route: HTTPRoute, group: any EventLoopGroup) async -> TimeAmount? {
        let eventLoop = group.next()
        let http = StreamingDeliveryProbe.run(route: route, chunks: 1, interval: .zero, timeout: .seconds(1), on: eventLoop)
        if let outcome = try? await http.get() { return .nanoseconds(outcome.responseHeadTime.nanoseconds / 2) }
        return await Self.tcpRoundTrip(host: route.dialHost, port: route.dialPort, group: group)
    }

    /// The time a TCP connect to the first hop takes (about one round trip), or nil when it fails.
    private static func tcpRoundTrip(host: String, port: Int, group: any EventLoopGroup) async -> TimeAmount? {
        let start = NIODeadline.now()
        guard let channel = try? await ClientBootstrap(group: group).connectTimeout(.seconds(2))
            .connect(host: host, port: port).get()
        else { return nil }
        let elapsed = NIODeadline.now() - start
        try? await channel.close()
        return elapsed
    }
}
