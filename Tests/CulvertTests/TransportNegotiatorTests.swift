import Culvert
import CulvertTools
import CulvertTransport
import NIOCore
import NIOPosix
import Testing

/// The probes find which transports really get through a path, name the failure mode of the others, and `auto`
/// picks the cheapest that works; against real tinyproxy and nginx started for the test.
@Suite(.serialized, .timeLimit(.minutes(2))) struct TransportNegotiatorTests {
    let group = TunnelHarness.group

    private func probe(port: Int, proxy: ProxyConfiguration? = nil) async -> [ProbeResult] {
        await TransportNegotiator.probe(
            server: ServerEndpoint(host: "127.0.0.1", port: port),
            options: TransportOptions(proxy: proxy, logger: TunnelHarness.logger),
            session: SessionConfiguration(token: "test-token"),
            group: self.group,
            logger: TunnelHarness.logger
        )
    }

    private func failures(_ results: [ProbeResult]) -> [TransportKind: ProbeFailure?] {
        Dictionary(uniqueKeysWithValues: results.map { ($0.transport, $0.failure) })
    }

    /// Directly, every transport works and auto picks WebSocket.
    @Test func directlyEveryTransportWorks() async throws {
        let server = try await TunnelHarness.startServer(allow: [])
        let results = await self.probe(port: server.localAddress!.port!)
        #expect(results.map(\.transport) == TransportNegotiator.preference)
        #expect(results.allSatisfy { $0.works && $0.roundTripMilliseconds != nil })
        #expect(TransportNegotiator.choice(results) == .websocket)
        await server.shutdown(gracePeriod: .zero)
    }

    /// Through tinyproxy, which strips Upgrade: WebSocket fails as upgrade_stripped, and auto picks CONNECT.
    @Test func throughTinyproxyAutoPicksConnect() async throws {
        let tinyproxy = try await startTinyproxy()
        defer { tinyproxy.stop() }
        let server = try await TunnelHarness.startServer(allow: [])
        let results = await self.probe(port: server.localAddress!.port!, proxy: ProxyConfiguration(host: "127.0.0.1", port: tinyproxy.port))
        #expect(self.failures(results) == [.websocket: .upgradeStripped, .connect: nil, .chunked: nil, .polling: nil])
        #expect(TransportNegotiator.choice(results) == .connect)
        await server.shutdown(gracePeriod: .zero)
    }

    /// Behind nginx's defaults, both upgrades are stripped: auto picks chunked (which falls back to short POSTs
    /// upstream by itself).
    @Test func behindNginxAutoPicksChunked() async throws {
        let server = try await TunnelHarness.startServer(allow: [])
        let nginx = try await startNginx(upstreamPort: server.localAddress!.port!)
        let results = await self.probe(port: nginx.port)
        #expect(self.failures(results) == [.websocket: .upgradeStripped, .connect: .upgradeStripped, .chunked: nil, .polling: nil])
        #expect(TransportNegotiator.choice(results) == .chunked)
        nginx.stop()
        await server.shutdown(gracePeriod: .zero)
    }

    /// A proxy that refuses CONNECT to the port and one that accepts it and relays nothing are told apart.
    @Test func connectRefusalsAreNamed() async throws {
        let tinyproxy = try await startTinyproxy(extraLines: ["ConnectPort 443"])
        defer { tinyproxy.stop() }
        let server = try await TunnelHarness.startServer(allow: [])
        let results = await self.probe(port: server.localAddress!.port!, proxy: ProxyConfiguration(host: "127.0.0.1", port: tinyproxy.port))
        #expect(self.failures(results)[.connect] == .connectRefused)
        #expect(TransportNegotiator.choice(results) == .chunked)
        await server.shutdown(gracePeriod: .zero)
    }

    /// With the server down, nothing works, each failure says unreachable, and there is no choice.
    @Test func serverDownNothingWorks() async throws {
        let port = try await RawConnection.unusedPort(group: self.group)
        let results = await self.probe(port: port)
        #expect(results.allSatisfy { !$0.works && $0.failure == .unreachable })
        #expect(TransportNegotiator.choice(results) == nil)
    }
}
