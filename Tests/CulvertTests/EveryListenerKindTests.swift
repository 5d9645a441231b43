@testable import Culvert
import CulvertCore
import CulvertTools
import CulvertTransport
import Foundation
import NIOCore
import NIOPosix
import Testing

/// Every listener kind (`-L` TCP and UDP, `-R`, `-D`, `-H`) carries a small transfer over every transport, and
/// through a real proxy (tinyproxy) with `auto`: the forwarding layer does not depend on how the session gets through.
@Suite(.serialized, .timeLimit(.minutes(3))) struct EveryListenerKindTests {
    @Test(arguments: TransportKind.allCases)
    func everyListenerKindCarriesASmallTransferOver(_ transport: TransportKind) async throws {
        try await Self.exercise(transport: transport, proxy: nil)
    }

    @Test func everyListenerKindCarriesASmallTransferThroughTinyproxyWithAuto() async throws {
        let tinyproxy = try await startTinyproxy()
        defer { tinyproxy.stop() }
        try await Self.exercise(transport: nil, proxy: ProxyConfiguration(host: "127.0.0.1", port: tinyproxy.port))
    }

    /// One server and one client with every kind of listener; `transport` nil negotiates (`auto`).
    static func exercise(transport: TransportKind?, proxy: ProxyConfiguration?) async throws {
        let group = TunnelHarness.group
        let web = try await startWebTarget()
        defer { web.stop() }
        let dns = try await UDPForwardingTests.startDNS()
        defer { dns.stop() }
        let echo = try await EchoServer.start(group: group)
        let reversePort = try await RawConnection.unusedPort(group: group)

        var serverConfiguration = TunnelServer.Configuration(
            listenHost: "127.0.0.1", listenPort: 0,
            session: SessionConfiguration(token: "test-token", authenticationRequired: true),
            allowlist: Allowlist(entries: try ["localhost:\(web.port)", "127.0.0.1:\(echo.port)", "127.0.0.1:\(dns.port)"].map { try Allowlist.Entry(parsing: $0) })
        )
        serverConfiguration.reverseAllowlist = ReverseAllowlist(entries: [ReverseAllowlist.Entry(host: "127.0.0.1", ports: reversePort...reversePort)])
        let server = try await TunnelServer.start(configuration: serverConfiguration, group: group, logger: TunnelHarness.logger)
        var configuration = TunnelClient.Configuration(
            server: ServerEndpoint(host: "127.0.0.1", port: server.localAddress!.port!, pathPrefix: "/culvert"),
            transport: transport ?? .websocket,
            transportOptions: TransportOptions(proxy: proxy, logger: TunnelHarness.logger),
            session: SessionConfiguration(token: "test-token"),
            forwards: [
                ForwardSpec(bindPort: 0, target: TargetAddress(host: "127.0.0.1", port: echo.port)),
                ForwardSpec(bindPort: 0, target: TargetAddress(host: "127.0.0.1", port: dns.port, transport: .udp)),
            ]
        )
        configuration.listeners = [.socks(ListenAddress(port: 0)), .httpProxy(ListenAddress(port: 0))]
        configuration.reverseForwards = [ForwardSpec(bindPort: reversePort, target: TargetAddress(host: "127.0.0.1", port: echo.port))]
        let client =
            if transport == nil {
                try await AutomaticTransport.connect(configuration: configuration, cache: nil, group: group, logger: TunnelHarness.logger)
            } else {
                try await TunnelClient.connect(configuration: configuration, group: group, logger: TunnelHarness.logger)
            }
        let ports = client.listenerAddresses.map { $0.port! }
        let page = "http://localhost:\(web.port)"

        let forwarded = try await TransferClient.echoTransfer(host: "127.0.0.1", port: ports[0], byteCount: 64 * 1024, group: group)
        let answer = ChildProcess.run("/usr/bin/dig", ["@127.0.0.1", "-p", "\(ports[1])", "+short", "+tries=1", "+time=5", "kinds.culvert.test"])
        let socks = ChildProcess.run("/usr/bin/curl", ["-sS", "--max-time", "10", "--socks5-hostname", "127.0.0.1:\(ports[2])", "\(page)/socks"])
        let plain = ChildProcess.run("/usr/bin/curl", ["-sS", "--max-time", "10", "--proxy", "http://127.0.0.1:\(ports[3])", "\(page)/plain"])
        let tunnelled = ChildProcess.run("/usr/bin/curl", ["-sS", "--max-time", "10", "--proxytunnel", "--proxy", "http://127.0.0.1:\(ports[3])", "\(page)/connect"])
        let reverseAnswers = try await client.reverseListenersAnswered.get()
        let reversed = try await TransferClient.echoTransfer(host: "127.0.0.1", port: reversePort, byteCount: 64 * 1024, group: group)

        await TunnelHarness(server: server, client: client).stop()
        try await echo.close()
        let over = transport.map { "\($0)" } ?? "auto through tinyproxy"
        #expect(forwarded.digestsMatch, "-L over \(over)")
        #expect(answer == "10.1.2.3\n", "-L …/udp over \(over)")
        #expect(socks == "nginx saw GET /socks for host localhost\n", "-D over \(over)")
        #expect(plain == "nginx saw GET /plain for host localhost\n", "-H over \(over)")
        #expect(tunnelled == "nginx saw GET /connect for host localhost\n", "-H CONNECT over \(over)")
        #expect(reverseAnswers == [.listening(port: reversePort)] && reversed.digestsMatch, "-R over \(over): the server answered \(reverseAnswers)")
    }
}
