import Culvert
import CulvertCore
import CulvertTools
import CulvertTransport
import Foundation
import NIOCore
import NIOPosix
import Prometheus
import Testing

/// What a server and a client report in Prometheus's text format: sessions by transport and user, streams and their
/// outcomes, bytes by transport, resumes, authentication failures and GOAWAYs, each in its own registry.
@Suite struct MetricsTests {
    let group = MultiThreadedEventLoopGroup.singleton

    /// The value of the sample `series` (name and labels exactly as emitted) in `registry`; nil when absent.
    static func sample(_ series: String, in registry: PrometheusCollectorRegistry) -> Double? {
        var bytes: [UInt8] = []
        registry.emit(into: &bytes)
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1))
        }
        return nil
    }

    @Test func aSessionsStreamsBytesResumeAndRefusalsAreCounted() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let serverRegistry = PrometheusCollectorRegistry()
        let clientRegistry = PrometheusCollectorRegistry()
        var configuration = TunnelServer.Configuration(
            listenHost: "127.0.0.1", listenPort: 0, session: SessionConfiguration(token: nil), allowlist: Allowlist()
        )
        configuration.session.metrics = TunnelMetrics(factory: PrometheusMetricsFactory(registry: serverRegistry))
        configuration.users = try UsersFile.parse("[users.alice]\ntoken = \"a\"\nallow = [\"127.0.0.1:\(echo.port)\"]\n", file: "u")
        let server = try await TunnelServer.start(configuration: configuration, group: self.group, logger: TunnelHarness.logger)
        let serverURL = ServerEndpoint(host: "127.0.0.1", port: server.localAddress!.port!)

        var session = SessionConfiguration(token: "a")
        session.user = "alice"
        session.metrics = TunnelMetrics(factory: PrometheusMetricsFactory(registry: clientRegistry))
        let client = try await TunnelClient.connect(
            configuration: .init(
                server: serverURL, transport: .websocket, transportOptions: TransportOptions(logger: TunnelHarness.logger), session: session,
                forwards: [echo.port, echo.port + 1 == 65536 ? 1 : echo.port + 1].map { ForwardSpec(bindPort: 0, target: .init(host: "127.0.0.1", port: $0)) }
            ),
            group: self.group, logger: TunnelHarness.logger
        )
        let transfer = try await TransferClient.echoTransfer(host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: 100_000, group: self.group)
        #expect(transfer.digestsMatch)
        _ = try await RawConnection.sendThenHalfCloseAndReadAll(port: client.listenerAddresses[1].port!, bytes: [1], group: self.group)

        await server.collectMetrics()
        #expect(Self.sample("culvert_sessions_open{transport=\"websocket\",user=\"alice\"}", in: serverRegistry) == 1)
        #expect(Self.sample("culvert_streams_opened_total{outcome=\"ok\"}", in: serverRegistry) == 1)
        #expect(Self.sample("culvert_streams_opened_total{outcome=\"refused\"}", in: serverRegistry) == 1)
        #expect(Self.sample("culvert_stream_bytes_total{transport=\"websocket\",direction=\"in\"}", in: serverRegistry) == 100_000)
        #expect(Self.sample("culvert_stream_bytes_total{transport=\"websocket\",direction=\"out\"}", in: serverRegistry) == 100_000)
        #expect(Self.sample("culvert_streams_open", in: serverRegistry) == 0)

        // A move to another transport is a resumption: the session is counted under the new transport.
        client.switchTransport(to: .chunked)
        let moved = await client.changes.wait(timeout: .seconds(20)) {
            await server.collectMetrics()
            return Self.sample("culvert_resumes_total{transport=\"chunked\"}", in: serverRegistry) == 1
        }
        #expect(moved)
        #expect(Self.sample("culvert_sessions_open{transport=\"chunked\",user=\"alice\"}", in: serverRegistry) == 1)
        #expect(Self.sample("culvert_sessions_open{transport=\"websocket\",user=\"alice\"}", in: serverRegistry) == 0)
        #expect(Self.sample("culvert_resume_duration_seconds_count", in: serverRegistry) == 1)

        // A wrong token is an authentication failure; the client's GOAWAY at shutdown is counted on its side.
        var wrong = session
        wrong.token = "not-alices"
        wrong.metrics = nil
        _ = await #expect(throws: SessionError.self) {
            _ = try await TunnelClient.connect(
                configuration: .init(server: serverURL, transport: .websocket, transportOptions: TransportOptions(logger: TunnelHarness.logger), session: wrong, forwards: []),
                group: self.group, logger: TunnelHarness.logger
            )
        }
        #expect(await server.changes.wait(timeout: .seconds(10)) { Self.sample("culvert_auth_failures_total", in: serverRegistry) == 1 })
        await client.shutdown(gracePeriod: .zero)
        #expect(Self.sample("culvert_goaways_sent_total{reason=\"normal_shutdown\"}", in: clientRegistry) == 1)
        #expect(await server.changes.wait(timeout: .seconds(10)) {
            Self.sample("culvert_sessions_open{transport=\"chunked\",user=\"alice\"}", in: serverRegistry) == 0
        })
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }
}
