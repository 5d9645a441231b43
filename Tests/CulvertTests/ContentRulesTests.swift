import Culvert
import CulvertCore
import CulvertTools
import CulvertTransport
import Foundation
import NIOCore
import Testing

/// A real proxy with content rules: squid from Debian with its defaults (no upgrades, CONNECT only to 443) and two
/// ACLs that refuse `application/octet-stream` uploads and downloads with its 403 page
/// (`fixtures/proxies/squid-forward-content-rules.conf`). The chunked and polling transports notice the refusal,
/// go on with text bodies, and say so; `auto` settles on chunked and the data arrives intact; a connection the session
/// resumes on starts in text.
@Suite(.serialized, .timeLimit(.minutes(2))) struct ContentRulesTests {
    @Test func squidRefusingBinaryBodiesLeavesChunkedAndPollingWorkingInText() async throws {
        let group = TunnelHarness.group
        let echo = try await EchoServer.start(group: group)
        let server = try await TunnelHarness.startServer(allow: ["127.0.0.1:\(echo.port)"])
        let squid = try await RealProxy.start(.squid, configuration: fixturesDirectory() + "/proxies/squid-forward-content-rules.conf")
        defer { squid.stop() }
        let endpoint = ServerEndpoint(host: "127.0.0.1", port: server.localAddress!.port!)
        let options = TransportOptions(proxy: ProxyConfiguration(host: "127.0.0.1", port: squid.port), logger: TunnelHarness.logger)

        let results = await TransportNegotiator.probe(
            server: endpoint, options: options, session: SessionConfiguration(token: "test-token"), group: group,
            logger: TunnelHarness.logger
        )
        let byKind = Dictionary(uniqueKeysWithValues: results.map { ($0.transport, $0) })
        #expect(byKind[.websocket]?.failure == .upgradeStripped)
        #expect(byKind[.connect]?.failure == .connectRefused)
        for kind in [TransportKind.chunked, .polling] {
            let result = try #require(byKind[kind])
            #expect(result.works, "\(kind): \(result.detail)")
            #expect(result.bodyShape == .text, "\(kind)")
            #expect(result.detail.contains("content rules refused application/octet-stream"), "\(kind): \(result.detail)")
        }
        #expect(TransportNegotiator.choice(results) == .chunked)
        // squid did refuse them: its access log has the 403s.
        let accessLog = (try? String(contentsOfFile: squid.directory + "/access.log", encoding: .utf8)) ?? ""
        #expect(accessLog.contains("TCP_DENIED/403"), "squid refused nothing:\n\(accessLog)")

        let configuration = TunnelClient.Configuration(
            server: endpoint, transport: .websocket, transportOptions: options, session: SessionConfiguration(token: "test-token"),
            forwards: [ForwardSpec(bindPort: 0, target: .init(host: "127.0.0.1", port: echo.port))]
        )
        let client = try await AutomaticTransport.connect(configuration: configuration, cache: nil, group: group, logger: TunnelHarness.logger)
        #expect(client.currentTransport == .chunked)
        let transfer = try await TransferClient.echoTransfer(
            host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: 1 << 20, seed: 4, group: group
        )
        #expect(transfer.digestsMatch)
        #expect(transfer.bytesReceived == 1 << 20)
        let session = client.session
        #expect(try await session.snapshot().bodyShape == .text)

        // The session resumes on a polling connection: it starts in text, which the session learnt, so squid
        // refuses nothing more.
        func denials() -> Int {
            ((try? String(contentsOfFile: squid.directory + "/access.log", encoding: .utf8)) ?? "")
                .components(separatedBy: "TCP_DENIED/403").count - 1
        }
        let refusedBefore = denials()
        #expect(refusedBefore > 0)
        client.switchTransport(to: .polling)
        #expect(await client.changes.wait(timeout: .seconds(20)) { await session.onLoop { $0.transportKind == .polling } })
        let again = try await TransferClient.echoTransfer(
            host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: 256 << 10, seed: 5, group: group
        )
        #expect(again.digestsMatch)
        #expect(try await session.snapshot().bodyShape == .text)
        #expect(denials() == refusedBefore, "the resumed connection had its bodies refused again")
        await client.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }

    /// Small bodies keep within their limit each way: a session that starts at text bodies of at most 4 KiB (as one
    /// that found a reply size limit does) gets through the test proxy refusing any request body over 8 KiB (413,
    /// which would move chunked to short POSTs) and any reply over it (403, or cut when streamed), with nothing
    /// refused or cut: streaming POSTs, streaming answers, short POSTs and polls each end in time.
    @Test(arguments: [TransportKind.chunked, .polling])
    func smallBodiesStayWithinTheirLimitEachWay(transport: TransportKind) async throws {
        let group = TunnelHarness.group
        let echo = try await EchoServer.start(group: group)
        let server = try await TunnelHarness.startServer(allow: ["127.0.0.1:\(echo.port)"])
        let proxy = try await FaultProxy.start(
            configuration: .init(faults: [.limitRequestBodies(bytes: 8192), .limitResponseBodies(bytes: 8192)]), group: group
        )
        var options = TransportOptions(proxy: ProxyConfiguration(host: "127.0.0.1", port: proxy.port), logger: TunnelHarness.logger)
        options.bodyShapeMemory = BodyShapeMemory(learnt: .init(shape: .text, byteLimit: 4096))
        let client = try await TunnelClient.connect(
            configuration: .init(
                server: ServerEndpoint(host: "127.0.0.1", port: server.localAddress!.port!), transport: transport,
                transportOptions: options, session: SessionConfiguration(token: "test-token"),
                forwards: [ForwardSpec(bindPort: 0, target: .init(host: "127.0.0.1", port: echo.port))]
            ),
            group: group, logger: TunnelHarness.logger
        )
        let transfer = try await TransferClient.echoTransfer(
            host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: 256 << 10, seed: 6, group: group
        )
        #expect(transfer.digestsMatch)
        #expect(transfer.bytesReceived == 256 << 10)
        let session = client.session
        let snapshot = try await session.snapshot()
        #expect(snapshot.bodyShape == .text)
        #expect(snapshot.bodyByteLimit == 4096)
        #expect(!snapshot.upstreamUsesShortRequests, "a streaming POST went past its limit and was refused")
        #expect(snapshot.resumptions == 0)
        await client.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await proxy.close()
        try await echo.close()
    }
}
