import Culvert
import CulvertTools
import CulvertTransport
import NIOCore
import NIOPosix
import Testing

/// What the user is told when a forward proxy stands in the way: each case one clear error, within the connect
/// timeout, never a hang. Real tinyproxy configurations where they can show it; small fakes where no real proxy
/// behaves that way on demand.
@Suite(.serialized, .timeLimit(.minutes(2))) struct ProxyErrorTests {
    let group = TunnelHarness.group

    private func connectError(
        transport: TransportKind, proxy: ProxyConfiguration, serverPort: Int, connectTimeout: TimeAmount = .seconds(5)
    ) async -> TransportError? {
        await TunnelHarness.transportError(connecting: transport, proxy: proxy, serverPort: serverPort, connectTimeout: connectTimeout)
    }

    /// tinyproxy drops `Upgrade`: the WebSocket request reaches the server as a plain GET, which answers 426,
    /// and the user is told a proxy may strip Upgrade.
    @Test func webSocketThroughTinyproxyFailsWithUpgradeStripped() async throws {
        let tinyproxy = try await startTinyproxy()
        defer { tinyproxy.stop() }
        let server = try await TunnelHarness.startServer(allow: [])
        let error = await self.connectError(
            transport: .websocket, proxy: ProxyConfiguration(host: "127.0.0.1", port: tinyproxy.port),
            serverPort: server.localAddress!.port!
        )
        guard case .unexpectedStatus(.websocket, 426, _, let hint)? = error else {
            Issue.record("got \(String(describing: error))")
            await server.shutdown(gracePeriod: .zero)
            return
        }
        #expect(hint.contains("strip Upgrade"))
        await server.shutdown(gracePeriod: .zero)
    }

    /// tinyproxy with `BasicAuth`: no credentials and wrong credentials get 407 messages naming Basic (for
    /// CONNECT and for absolute-form requests); the right ones get through.
    @Test(arguments: [TransportKind.connect, .polling])
    func proxyAuthenticationIsReportedAndHonoured(transport: TransportKind) async throws {
        let tinyproxy = try await startTinyproxy(extraLines: ["BasicAuth alice s3cret"])
        defer { tinyproxy.stop() }
        let echo = try await EchoServer.start(group: self.group)
        let server = try await TunnelHarness.startServer(allow: ["127.0.0.1:\(echo.port)"])
        let port = server.localAddress!.port!

        let missing = await self.connectError(
            transport: transport, proxy: ProxyConfiguration(host: "127.0.0.1", port: tinyproxy.port), serverPort: port
        )
        #expect(missing == .proxyAuthenticationRequired(proxy: "http://127.0.0.1:\(tinyproxy.port)", scheme: "Basic", credentialsSent: false))
        #expect(missing.map { "\($0)".contains("USER:PASS@") } == true)

        let wrong = await self.connectError(
            transport: transport,
            proxy: ProxyConfiguration(host: "127.0.0.1", port: tinyproxy.port, username: "alice", password: "nope"),
            serverPort: port
        )
        #expect(wrong == .proxyAuthenticationRequired(proxy: "http://127.0.0.1:\(tinyproxy.port)", scheme: "Basic", credentialsSent: true))

        let client = try await TunnelHarness.connectClient(
            serverPort: port, targets: [echo.port], transport: transport,
            proxy: ProxyConfiguration(host: "127.0.0.1", port: tinyproxy.port, username: "alice", password: "s3cret")
        )
        let result = try await TransferClient.echoTransfer(
            host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: 1_000_000, group: self.group
        )
        #expect(result.digestsMatch)
        await client.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }

    /// tinyproxy limited to `ConnectPort 443` answers CONNECT to the server's port with 403: the proxy refuses
    /// CONNECT to this port.
    @Test func connectToADisallowedPortIsRefused() async throws {
        let tinyproxy = try await startTinyproxy(extraLines: ["ConnectPort 443"])
        defer { tinyproxy.stop() }
        let server = try await TunnelHarness.startServer(allow: [])
        let error = await self.connectError(
            transport: .connect, proxy: ProxyConfiguration(host: "127.0.0.1", port: tinyproxy.port),
            serverPort: server.localAddress!.port!
        )
        guard case .proxyRefused(_, 403, _, "CONNECT")? = error else {
            Issue.record("got \(String(describing: error))")
            await server.shutdown(gracePeriod: .zero)
            return
        }
        #expect("\(error!)".contains("refuses CONNECT"))
        await server.shutdown(gracePeriod: .zero)
    }

    /// A proxy that is not running is named as the thing that cannot be reached, for every transport.
    @Test(arguments: TransportKind.allCases)
    func unreachableProxyIsNamed(transport: TransportKind) async throws {
        let proxyPort = try await RawConnection.unusedPort(group: self.group)
        let error = await self.connectError(
            transport: transport, proxy: ProxyConfiguration(host: "127.0.0.1", port: proxyPort), serverPort: 1
        )
        #expect(error == .proxyUnreachable(proxy: "http://127.0.0.1:\(proxyPort)", reason: "connection refused"))
    }

    /// A proxy that the real server is not behind answers 502 for absolute-form requests: the user learns the
    /// proxy could not reach the server.
    @Test func proxyThatCannotReachTheServerIsReported() async throws {
        let proxy = try await FaultProxy.start(group: self.group)
        let deadPort = try await RawConnection.unusedPort(group: self.group)
        let error = await self.connectError(
            transport: .chunked, proxy: ProxyConfiguration(host: "127.0.0.1", port: proxy.port), serverPort: deadPort
        )
        #expect(error == .proxyCannotReachServer(proxy: "http://127.0.0.1:\(proxy.port)", status: 502, reason: "Bad Gateway"))
        try await proxy.close()
    }

    /// An intercepting proxy that accepts CONNECT and then relays nothing fails the CONNECT transport within the
    /// connect timeout, saying so.
    @Test func connectAcceptedButNothingRelayedFailsWithinTheTimeout() async throws {
        let blackHole = try await ServerBootstrap(group: self.group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AcceptConnectThenSwallow())
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let port = blackHole.localAddress!.port!
        let error = await self.connectError(
            transport: .connect, proxy: ProxyConfiguration(host: "127.0.0.1", port: port), serverPort: 9,
            connectTimeout: .milliseconds(500)
        )
        #expect(error == .proxyRelaysNothing(proxy: "http://127.0.0.1:\(port)", seconds: 0.5))
        try await blackHole.close()
    }
}

/// Answers the first request head with `200 Connection established`, then swallows every byte.
private final class AcceptConnectThenSwallow: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private var head = ""
    private var answered = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.answered else { return }
        self.head += String(buffer: self.unwrapInboundIn(data))
        if self.head.contains("\r\n\r\n") {
            self.answered = true
            context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: "HTTP/1.1 200 Connection established\r\n\r\n")), promise: nil)
        }
    }
}
