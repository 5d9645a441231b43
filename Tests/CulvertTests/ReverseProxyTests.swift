import CulvertCore
import CulvertTools
import NIOCore
import NIOPosix
import Testing

@testable import Culvert
@testable import CulvertTransport

/// Culvert behind nginx with its defaults (HTTP/1.0 upstream, request bodies buffered, 1 MiB body limit), started
/// for real from Debian's package.
@Suite(.serialized, .timeLimit(.minutes(2))) struct ReverseProxyTests {
    let group = TunnelHarness.group

    /// Runs `body` with a server behind nginx, an echo target, and the URL port of nginx.
    private func withServerBehindNginx(_ body: (_ nginxPort: Int, _ echoPort: Int) async throws -> Void) async throws {
        let echo = try await EchoServer.start(group: self.group)
        let server = try await TunnelHarness.startServer(allow: ["127.0.0.1:\(echo.port)"])
        let nginx = try await startNginx(upstreamPort: server.localAddress!.port!)
        do {
            try await body(nginx.port, echo.port)
        } catch {
            Issue.record("nginx's error log: \(nginx.log)")
            nginx.stop()
            await server.shutdown(gracePeriod: .zero)
            try await echo.close()
            throw error
        }
        nginx.stop()
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }

    /// nginx holds a streaming request body until it ends: the chunked transport sees no acknowledgement, switches
    /// upstream to short POSTs, and 4 MiB each way still arrive intact (downstream keeps streaming).
    @Test func chunkedBehindNginxFallsBackToShortPOSTsAndDeliversEverything() async throws {
        try await self.withServerBehindNginx { nginxPort, echoPort in
            let client = try await TunnelHarness.connectClient(
                serverPort: nginxPort, targets: [echoPort], transport: .chunked,
                http: HTTPTransportClientSettings(upstreamAckTimeout: .milliseconds(500))
            )
            let result = try await TransferClient.echoTransfer(
                host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: 4 << 20, seed: 5,
                group: self.group
            )
            #expect(result.digestsMatch)
            #expect(result.bytesReceived == 4 << 20)
            let modes = try await client.session.submit { session in
                let connection = session.transport as? HTTPClientTransportConnection
                return (connection?.upMode, connection?.downMode)
            }.get()
            #expect(modes.0 == .batch)
            #expect(modes.1 == .stream)
            await client.shutdown(gracePeriod: .zero)
        }
    }

    /// Polling needs nothing nginx's defaults withhold: 4 MiB each way arrive intact.
    @Test func pollingBehindNginxDeliversEverything() async throws {
        try await self.withServerBehindNginx { nginxPort, echoPort in
            let client = try await TunnelHarness.connectClient(serverPort: nginxPort, targets: [echoPort], transport: .polling)
            let result = try await TransferClient.echoTransfer(
                host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: 4 << 20, seed: 6,
                group: self.group
            )
            #expect(result.digestsMatch)
            await client.shutdown(gracePeriod: .zero)
        }
    }

    /// nginx's default HTTP/1.0 upstream drops Upgrade: WebSocket is refused with the hint that a proxy strips it.
    @Test func webSocketBehindNginxDefaultsIsRefusedWithAHint() async throws {
        try await self.withServerBehindNginx { nginxPort, echoPort in
            do {
                let client = try await TunnelHarness.connectClient(serverPort: nginxPort, targets: [echoPort], transport: .websocket)
                await client.shutdown(gracePeriod: .zero)
                Issue.record("WebSocket got through nginx's defaults")
            } catch SessionError.transport(.unexpectedStatus(.websocket, let status, _, let hint)) {
                #expect(status == 426)
                #expect(hint.contains("strip Upgrade"))
            }
        }
    }
}
