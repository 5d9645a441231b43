import Culvert
import CulvertCore
import CulvertTools
import CulvertTransport
import NIOCore
import NIOPosix
import Testing

/// One proxy misbehaviour at a time (and combinations seen in the field), injected by the Swift test proxy as a
/// forward or a reverse proxy: the probes name the failure mode of each transport it breaks, `auto` settles on the
/// best transport that still works and moves 4 MiB (1 MiB where bodies go as text) each way intact through the faulty proxy, and so does every other
/// transport the fault bears on.
@Suite(.serialized, .timeLimit(.minutes(2))) struct FaultInjectionTests {
    struct Case: Sendable, CustomTestStringConvertible {
        let faults: Set<FaultProxy.Fault>
        var reverse = false
        let failures: [TransportKind: ProbeFailure]
        let choice: TransportKind
        /// Working transports whose probe must report upstream in short POSTs (polling always does).
        var shortPosts: Set<TransportKind> = [.polling]
        /// Transports that carry the 4 MiB besides the choice, because the fault bears on them.
        var alsoCarry: [TransportKind] = []
        /// Words the failed transports' details must contain, where the failure code alone does not say enough.
        var details: [TransportKind: String] = [:]
        /// Working transports whose probe must report text bodies, and those whose bodies must also be small.
        var textBodies: Set<TransportKind> = []
        var smallBodies: Set<TransportKind> = []
        /// Bytes carried each way (text bodies cost the debug build's base64 time: small volumes for them).
        var byteCount = 4 << 20
        /// A lower bound on every working transport's measured round trip.
        var minimumRoundTripMilliseconds: Double = 0
        var testDescription: String {
            (self.reverse ? "reverse " : "") + self.faults.map { "\($0)" }.sorted().joined(separator: "+")
        }
    }

    static let cases: [Case] = [
        Case(faults: [.stripUpgrade], failures: [.websocket: .upgradeStripped], choice: .connect),
        Case(faults: [.nothingAfterUpgrade], failures: [.websocket: .noRelayAfterUpgrade], choice: .connect),
        Case(faults: [.refuseConnect], failures: [.connect: .connectRefused], choice: .websocket),
        Case(faults: [.connectThenNothing], failures: [.connect: .connectNoRelay], choice: .websocket),
        Case(faults: [.bufferResponses], failures: [.chunked: .responseBuffered], choice: .websocket, alsoCarry: [.polling],
             details: [.chunked: "held"]),
        Case(faults: [.burstResponses(interval: .milliseconds(200))], failures: [.chunked: .responseBuffered],
             choice: .websocket, alsoCarry: [.polling], details: [.chunked: "bursts"]),
        Case(faults: [.bufferRequestBodies], failures: [:], choice: .websocket, shortPosts: [.chunked, .polling],
             alsoCarry: [.chunked]),
        Case(faults: [.limitRequestBodies(bytes: 1024 * 1024)], failures: [:], choice: .websocket,
             alsoCarry: [.chunked, .polling]),
        Case(faults: [.latency(.milliseconds(100))], failures: [:], choice: .websocket, minimumRoundTripMilliseconds: 150),
        // A corporate proxy that both strips Upgrade and allows CONNECT only to 443.
        Case(faults: [.stripUpgrade, .refuseConnect], failures: [.websocket: .upgradeStripped, .connect: .connectRefused],
             choice: .chunked),
        // Content rules: a filter that blocks binary uploads and downloads (and neither upgrades nor CONNECT pass). The
        // chunked and polling transports' bodies go as text instead, and say so.
        Case(faults: [.stripUpgrade, .refuseConnect, .refuseRequestContentTypes(["application/octet-stream"]),
                      .refuseResponseContentTypes(["application/octet-stream"])],
             failures: [.websocket: .upgradeStripped, .connect: .connectRefused], choice: .chunked, alsoCarry: [.polling],
             details: [.chunked: "content rules refused application/octet-stream", .polling: "text/plain"],
             textBodies: [.chunked, .polling], byteCount: 1 << 20),
        // Only downloads of binary blocked, as a reverse proxy in front of the server.
        Case(faults: [.stripUpgrade, .refuseResponseContentTypes(["application/octet-stream"])], reverse: true,
             failures: [.websocket: .upgradeStripped, .connect: .upgradeStripped], choice: .chunked, alsoCarry: [.polling],
             textBodies: [.chunked, .polling], byteCount: 1 << 20),
        // Every body type the transports have refused in requests: chunked and polling cannot send, and say why.
        Case(faults: [.refuseRequestContentTypes(["application/octet-stream", "text/plain"])],
             failures: [.chunked: .contentRefused, .polling: .contentRefused], choice: .websocket,
             details: [.chunked: "then a POST with text/plain", .polling: "application/octet-stream bodies answered 403"],
             byteCount: 1 << 20),
        // A reply size limit: a polling response over it is refused whatever its type, so polling ends up with small
        // text bodies; chunked's streaming responses (no declared length) are cut at the limit, and resumed.
        Case(faults: [.stripUpgrade, .refuseConnect, .limitResponseBodies(bytes: 128 * 1024)],
             failures: [.websocket: .upgradeStripped, .connect: .connectRefused], choice: .chunked, alsoCarry: [.polling],
             byteCount: 1 << 20),
        // A reverse proxy with the defaults of many: no upgrades, responses and request bodies buffered, idle
        // connections cut at 60 s, bodies over 1 MiB refused.
        Case(
            faults: [.stripUpgrade, .bufferResponses, .bufferRequestBodies, .idleTimeout(.seconds(60)),
                     .limitRequestBodies(bytes: 1024 * 1024)],
            reverse: true,
            failures: [.websocket: .upgradeStripped, .connect: .upgradeStripped, .chunked: .responseBuffered],
            choice: .polling
        ),
    ]

    @Test(arguments: Self.cases)
    func probesNameTheFailureAndTheChoiceCarriesData(_ faultCase: Case) async throws {
        let group = TunnelHarness.group
        let echo = try await EchoServer.start(group: group)
        let server = try await TunnelHarness.startServer(allow: ["127.0.0.1:\(echo.port)"])
        let serverPort = server.localAddress!.port!
        let proxy = try await FaultProxy.start(
            configuration: .init(upstream: faultCase.reverse ? ("127.0.0.1", serverPort) : nil, faults: faultCase.faults),
            group: group
        )
        // Through a reverse proxy the client dials the proxy as its server; through a forward proxy, the server.
        let proxyConfiguration = faultCase.reverse ? nil : ProxyConfiguration(host: "127.0.0.1", port: proxy.port)
        let dialedPort = faultCase.reverse ? proxy.port : serverPort
        let results = await TransportNegotiator.probe(
            server: ServerEndpoint(host: "127.0.0.1", port: dialedPort),
            options: TransportOptions(proxy: proxyConfiguration, logger: TunnelHarness.logger),
            session: SessionConfiguration(token: "test-token"),
            group: group,
            logger: TunnelHarness.logger
        )
        for result in results {
            #expect(result.failure == faultCase.failures[result.transport], "\(result.transport): \(result.detail)")
            if let words = faultCase.details[result.transport] {
                #expect(result.detail.contains(words), "\(result.transport): \(result.detail)")
            }
            if result.works && (result.transport == .chunked || result.transport == .polling) {
                #expect(result.bodyShape == (faultCase.textBodies.contains(result.transport) ? .text : .binary), "\(result.transport)")
                #expect(result.detail.contains("KiB") == faultCase.smallBodies.contains(result.transport), "\(result.transport): \(result.detail)")
            }
            if result.works {
                #expect(result.upstream == (faultCase.shortPosts.contains(result.transport) ? .shortRequests : .stream),
                        "\(result.transport)")
                #expect((result.roundTripMilliseconds ?? 0) >= faultCase.minimumRoundTripMilliseconds, "\(result.transport)")
            }
        }
        #expect(TransportNegotiator.choice(results) == faultCase.choice)
        // `auto` itself, then each transport the fault bears on, forced.
        for transport in [nil] + faultCase.alsoCarry {
            let configuration = TunnelClient.Configuration(
                server: ServerEndpoint(host: "127.0.0.1", port: dialedPort),
                transport: transport ?? .websocket,
                transportOptions: TransportOptions(proxy: proxyConfiguration, logger: TunnelHarness.logger),
                session: SessionConfiguration(token: "test-token"),
                forwards: [ForwardSpec(bindPort: 0, target: .init(host: "127.0.0.1", port: echo.port))]
            )
            let client = transport == nil
                ? try await AutomaticTransport.connect(configuration: configuration, cache: nil, group: group, logger: TunnelHarness.logger)
                : try await TunnelClient.connect(configuration: configuration, group: group, logger: TunnelHarness.logger)
            #expect(client.currentTransport == transport ?? faultCase.choice)
            let transfer = try await TransferClient.echoTransfer(
                host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: faultCase.byteCount, seed: 9, group: group
            )
            #expect(transfer.digestsMatch, "\(client.currentTransport)")
            #expect(transfer.bytesReceived == faultCase.byteCount, "\(client.currentTransport)")
            if faultCase.faults.contains(.limitResponseBodies(bytes: 128 * 1024)) && transport == .polling {
                // Its 1 MiB responses were refused as binary and as text: it went on in small text bodies.
                let session = client.session
                let snapshot = try await session.snapshot()
                let (shape, limit) = (snapshot.bodyShape, snapshot.bodyByteLimit)
                #expect(shape == .text)
                #expect(limit == 64 * 1024)
            }
            if faultCase.faults.contains(.limitRequestBodies(bytes: 1024 * 1024)) && transport == .chunked {
                // 4 MiB in one streaming POST reaches the 1 MiB limit: the 413 moved upstream to short POSTs.
                let session = client.session
                #expect(try await session.snapshot().upstreamUsesShortRequests)
            }
            await client.shutdown(gracePeriod: .zero)
        }
        await server.shutdown(gracePeriod: .zero)
        try await proxy.close()
        try await echo.close()
    }

    /// A proxy that cuts request bodies still open after a while: the chunked transport's streaming POST (kept
    /// open by keepalive pings) is cut twice, after which upstream goes as short POSTs, and nothing is lost.
    @Test func streamingPostsCutWhileOpenMoveUpstreamToShortPosts() async throws {
        let group = TunnelHarness.group
        let echo = try await EchoServer.start(group: group)
        let server = try await TunnelHarness.startServer(allow: ["127.0.0.1:\(echo.port)"])
        let proxy = try await FaultProxy.start(configuration: .init(faults: [.cutSlowRequestBodies(after: .milliseconds(300))]), group: group)
        let client = try await TunnelClient.connect(
            configuration: .init(
                server: ServerEndpoint(host: "127.0.0.1", port: server.localAddress!.port!),
                transport: .chunked,
                transportOptions: TransportOptions(proxy: ProxyConfiguration(host: "127.0.0.1", port: proxy.port), logger: TunnelHarness.logger),
                session: SessionConfiguration(token: "test-token", keepaliveInterval: .milliseconds(100)),
                forwards: [ForwardSpec(bindPort: 0, target: .init(host: "127.0.0.1", port: echo.port))]
            ),
            group: group, logger: TunnelHarness.logger
        )
        let localPort = client.listenerAddresses[0].port!
        let session = client.session
        #expect(await client.changes.wait(timeout: .seconds(20)) { await session.onLoop { $0.upstreamUsesShortRequests } })
        let transfer = try await TransferClient.echoTransfer(host: "127.0.0.1", port: localPort, byteCount: 4 << 20, seed: 3, group: group)
        #expect(transfer.digestsMatch)
        #expect(client.sessionsStarted == 1)
        await client.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await proxy.close()
        try await echo.close()
    }

    /// A proxy that cuts connections idle for a second: with keepalive more often than that (and polls held
    /// shorter), no transport's connection goes idle long enough to be cut, and data flows after the idle spell.
    @Test(arguments: TransportKind.allCases)
    func keepaliveBelowTheProxyIdleTimeoutKeepsTheTunnelUp(transport: TransportKind) async throws {
        let group = TunnelHarness.group
        let echo = try await EchoServer.start(group: group)
        let server = try await TunnelServer.start(
            configuration: .init(
                listenHost: "127.0.0.1", listenPort: 0,
                session: SessionConfiguration(token: "test-token", keepaliveInterval: .milliseconds(300)),
                allowlist: Allowlist(entries: [try Allowlist.Entry(parsing: "127.0.0.1:\(echo.port)")]),
                http: HTTPTransportServerSettings(pollHoldTime: .milliseconds(400))
            ),
            group: group, logger: TunnelHarness.logger
        )
        let proxy = try await FaultProxy.start(configuration: .init(faults: [.idleTimeout(.seconds(1))]), group: group)
        let client = try await TunnelClient.connect(
            configuration: .init(
                server: ServerEndpoint(host: "127.0.0.1", port: server.localAddress!.port!),
                transport: transport,
                transportOptions: TransportOptions(proxy: ProxyConfiguration(host: "127.0.0.1", port: proxy.port), logger: TunnelHarness.logger),
                session: SessionConfiguration(token: "test-token", keepaliveInterval: .milliseconds(300)),
                forwards: [ForwardSpec(bindPort: 0, target: .init(host: "127.0.0.1", port: echo.port))]
            ),
            group: group, logger: TunnelHarness.logger
        )
        // The idle spell under test: two and a half of the proxy's idle timeouts with nothing but keepalive.
        try await Task.sleep(for: .milliseconds(2500))
        let transfer = try await TransferClient.echoTransfer(
            host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: 1024 * 1024, seed: 5, group: group
        )
        #expect(transfer.digestsMatch)
        #expect(try await client.session.snapshot().resumptions == 0)
        #expect(client.sessionsStarted == 1)
        await client.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await proxy.close()
        try await echo.close()
    }

    /// The same proxy with keepalive far above its idle timeout: it cuts the idle WebSocket connection, the session
    /// resumes on a new one, and the data sent after arrives intact.
    @Test func anIdleConnectionCutByTheProxyIsResumed() async throws {
        let group = TunnelHarness.group
        let echo = try await EchoServer.start(group: group)
        let server = try await TunnelHarness.startServer(allow: ["127.0.0.1:\(echo.port)"])
        let proxy = try await FaultProxy.start(configuration: .init(faults: [.idleTimeout(.milliseconds(500))]), group: group)
        let client = try await TunnelHarness.connectClient(
            serverPort: server.localAddress!.port!, targets: [echo.port],
            proxy: ProxyConfiguration(host: "127.0.0.1", port: proxy.port)
        )
        // Cut after 500 ms idle, then resumed: awaited, not slept for.
        let session = client.session
        #expect(await client.changes.wait(timeout: .seconds(20)) { await session.onLoop { $0.resumptions >= 1 } })
        let transfer = try await TransferClient.echoTransfer(
            host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: 1024 * 1024, seed: 6, group: group
        )
        #expect(transfer.digestsMatch)
        #expect(client.sessionsStarted == 1)
        await client.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await proxy.close()
        try await echo.close()
    }
}
