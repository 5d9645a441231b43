import CulvertCore
import CulvertTransport
import Logging
import NIOCore
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
        let firstHop = HTTPRoute(endpoint: server, proxy: options.proxy)
        let rtt = await Self.tcpRoundTrip(host: firstHop.dialHost, port: firstHop.dialPort, group: group)
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
        await withTaskGroup(of: ProbeResult.self) { tasks in
            for kind in Self.preference {
                tasks.addTask {
                    await Self.probe(kind, server: server, options: finalOptions, session: finalSession, group: group, logger: logger)
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
        group: any EventLoopGroup,
        logger: Logger
    ) async -> ProbeResult {
        let start = NIODeadline.now()
        let eventLoop = group.next()
        var transportEstablished = false
        do {
            let connection = try await ClientTransports.make(kind, options: options).connect(to: server, on: eventLoop).get()
            transportEstablished = true
            let handshakeStart = NIODeadline.now()
            let tunnel = try await eventLoop.submit {
                let tunnel = TunnelSession(role: .client, transport: connection, configuration: session, logger: logger)
                tunnel.start()
                return tunnel
            }.get()
            _ = try await tunnel.established.get()
            let handshake = NIODeadline.now() - handshakeStart
            _ = try? await tunnel.shutdown(gracePeriod: .zero).get()
            return ProbeResult(
                transport: kind, works: true, failure: nil, detail: "",
                roundTripMilliseconds: Double(handshake.nanoseconds) / 2e6,
                elapsedMilliseconds: Double((NIODeadline.now() - start).nanoseconds) / 1e6
            )
        } catch {
            return ProbeResult(
                transport: kind, works: false,
                failure: ProbeFailure.classify(error, kind: kind, transportEstablished: transportEstablished),
                detail: "\(error)", roundTripMilliseconds: nil,
                elapsedMilliseconds: Double((NIODeadline.now() - start).nanoseconds) / 1e6
            )
        }
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
