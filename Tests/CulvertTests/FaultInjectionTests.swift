import Culvert
import CulvertTools
import CulvertTransport
import NIOPosix
import Testing

/// One proxy misbehaviour at a time (and a combination seen in the field), injected by the Swift test proxy:
/// the probes name the failure mode of each transport it breaks, the choice is the best transport that still works,
/// and that transport moves 16 MiB each way intact through the faulty proxy.
@Suite(.serialized, .timeLimit(.minutes(2))) struct FaultInjectionTests {
    struct Case: Sendable, CustomTestStringConvertible {
        let faults: Set<ForwardProxy.Fault>
        let failures: [TransportKind: ProbeFailure]
        let choice: TransportKind
        var testDescription: String { self.faults.map { "\($0)" }.sorted().joined(separator: "+") }
    }

    static let cases: [Case] = [
        Case(faults: [.stripUpgrade], failures: [.websocket: .upgradeStripped], choice: .connect),
        Case(faults: [.nothingAfterUpgrade], failures: [.websocket: .noRelayAfterUpgrade], choice: .connect),
        Case(faults: [.refuseConnect], failures: [.connect: .connectRefused], choice: .websocket),
        Case(faults: [.connectThenNothing], failures: [.connect: .connectNoRelay], choice: .websocket),
        // A corporate proxy that both strips Upgrade and allows CONNECT only to 443.
        Case(faults: [.stripUpgrade, .refuseConnect], failures: [.websocket: .upgradeStripped, .connect: .connectRefused], choice: .chunked),
    ]

    @Test(arguments: Self.cases)
    func probesNameTheFailureAndTheChoiceCarriesData(_ faultCase: Case) async throws {
        let group = TunnelHarness.group
        let echo = try await EchoServer.start(group: group)
        let server = try await TunnelHarness.startServer(allow: ["127.0.0.1:\(echo.port)"])
        let proxy = try await ForwardProxy.start(configuration: .init(faults: faultCase.faults), group: group)
        let proxyConfiguration = ProxyConfiguration(host: "127.0.0.1", port: proxy.port)
        let results = await TransportNegotiator.probe(
            server: ServerEndpoint(host: "127.0.0.1", port: server.localAddress!.port!),
            options: TransportOptions(proxy: proxyConfiguration, logger: TunnelHarness.logger),
            session: SessionConfiguration(token: "test-token"),
            group: group,
            logger: TunnelHarness.logger
        )
        for result in results {
            #expect(result.failure == faultCase.failures[result.transport], "\(result.transport): \(result.detail)")
        }
        #expect(TransportNegotiator.choice(results) == faultCase.choice)
        let client = try await TunnelHarness.connectClient(
            serverPort: server.localAddress!.port!, targets: [echo.port], transport: faultCase.choice, proxy: proxyConfiguration
        )
        let transfer = try await TransferClient.echoTransfer(
            host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: 16 * 1024 * 1024, seed: 9, group: group
        )
        #expect(transfer.digestsMatch)
        #expect(transfer.bytesReceived == 16 * 1024 * 1024)
        await client.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await proxy.close()
        try await echo.close()
    }
}
