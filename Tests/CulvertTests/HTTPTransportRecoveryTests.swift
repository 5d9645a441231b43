import Culvert
import CulvertTools
import CulvertTransport
import NIOCore
import NIOHTTP1
import NIOPosix
import Testing

/// The chunked and polling transports replace their requests before proxy limits, recover from cut
/// connections without losing or repeating a byte, and the server frees what abandoned clients left.
@Suite(.serialized, .timeLimit(.minutes(2))) struct HTTPTransportRecoveryTests {
    let group = TunnelHarness.group

    private func transfer(
        transport: TransportKind,
        server serverSettings: HTTPTransportServerSettings = .init(),
        client clientSettings: HTTPTransportClientSettings = .init(),
        proxy: FaultProxy? = nil,
        byteCount: Int = 4 << 20
    ) async throws -> TransferClient.Result {
        let echo = try await EchoServer.start(group: self.group)
        let server = try await TunnelHarness.startServer(allow: ["127.0.0.1:\(echo.port)"], http: serverSettings)
        let client = try await TunnelHarness.connectClient(
            serverPort: server.localAddress!.port!, targets: [echo.port], transport: transport,
            proxy: proxy.map { ProxyConfiguration(host: "127.0.0.1", port: $0.port) }, http: clientSettings
        )
        let result = try await TransferClient.echoTransfer(
            host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: byteCount, seed: 11, group: self.group
        )
        #expect(try await client.session.snapshot().statistics.streamsReset == 0)
        await client.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
        return result
    }

    /// Streaming requests and responses replaced every 256 KiB or 200 ms lose and reorder nothing.
    @Test func chunkedRequestsReplacedOftenDeliverEverything() async throws {
        let result = try await self.transfer(
            transport: .chunked,
            server: HTTPTransportServerSettings(streamResponseLimitBytes: 256 * 1024, streamResponseMaxAge: .milliseconds(200)),
            client: HTTPTransportClientSettings(streamRequestLimitBytes: 256 * 1024, streamRequestMaxAge: .milliseconds(200))
        )
        #expect(result.digestsMatch)
        #expect(result.bytesReceived == 4 << 20)
    }

    /// Polling with 64 KiB bodies both ways (many requests per megabyte) delivers everything in order.
    @Test func pollingWithSmallBodiesDeliversEverything() async throws {
        let result = try await self.transfer(
            transport: .polling,
            server: HTTPTransportServerSettings(maximumPollResponseBytes: 64 * 1024),
            client: HTTPTransportClientSettings(maximumPostBodyBytes: 64 * 1024)
        )
        #expect(result.digestsMatch)
        #expect(result.bytesReceived == 4 << 20)
    }

    /// A proxy that cuts every connection after 300 KB from the server: requests are retried and lost
    /// responses sent again from the last acknowledged offset; no byte is lost or delivered twice.
    @Test(arguments: [TransportKind.chunked, .polling])
    func connectionsCutMidResponseLoseNothing(transport: TransportKind) async throws {
        let proxy = try await FaultProxy.start(configuration: .init(cutAfterBytes: 300_000), group: self.group)
        let result = try await self.transfer(transport: transport, proxy: proxy, byteCount: 4 << 20)
        #expect(result.digestsMatch)
        #expect(result.bytesReceived == 4 << 20)
        try await proxy.close()
    }

    /// 1,000 polling connections opened and abandoned (their clients vanish mid-poll) are all freed after the
    /// idle timeout, with their sessions.
    @Test func thousandAbandonedPollingConnectionsAreFreed() async throws {
        let server = try await TunnelHarness.startServer(
            allow: [], http: HTTPTransportServerSettings(idleTimeout: .milliseconds(500))
        )
        let port = server.localAddress!.port!
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            for batch in 0..<10 {
                tasks.addTask {
                    for _ in 0..<100 { try await AbandoningPollClient.openPollAndVanish(port: port, group: self.group) }
                    _ = batch
                }
            }
            try await tasks.waitForAll()
        }
        #expect(server.httpConnectionCount > 0)
        var waited = 0
        while (server.httpConnectionCount > 0 || server.activeSessions > 0) && waited < 100 {
            try await Task.sleep(for: .milliseconds(100))
            waited += 1
        }
        #expect(server.httpConnectionCount == 0)
        #expect(server.activeSessions == 0)
        await server.shutdown(gracePeriod: .zero)
    }
}

/// A client that opens a polling connection, starts a poll, and disappears without closing it.
enum AbandoningPollClient {
    static func openPollAndVanish(port: Int, group: any EventLoopGroup) async throws {
        let open = try await RawConnection.exchange(
            port: port,
            request: "POST /culvert/open?t=polling HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
            group: group
        )
        guard let id = open.split(separator: "\r\n\r\n").last?.split(separator: "\n").first, id.count == 32 else {
            throw RawConnection.Failure(description: "open answered \(open)")
        }
        _ = try await RawConnection.sendAndClose(
            port: port,
            request: "GET /culvert/down?c=\(id)&m=poll&a=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            group: group
        )
    }
}
