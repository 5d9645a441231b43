import Culvert
import CulvertCore
import Foundation
import CulvertTools
import CulvertTransport
import Logging
import NIOCore
import NIOPosix
import Testing

/// A server and a client on loopback, with the client's forwards given as targets.
struct TunnelHarness {
    let server: TunnelServer
    let client: TunnelClient
    var serverPort: Int { self.server.localAddress!.port! }
    func localPort(_ index: Int = 0) -> Int { self.client.listenerAddresses[index].port! }

    static let group = MultiThreadedEventLoopGroup.singleton

    static var logger: Logger {
        var logger = Logger(label: "culvert.test", factory: { label in StreamLogHandler.standardError(label: label) })
        // CULVERT_TEST_LOG=debug shows what the tunnel does while a test runs.
        logger.logLevel = ProcessInfo.processInfo.environment["CULVERT_TEST_LOG"].flatMap { Logger.Level(rawValue: $0) } ?? .critical
        return logger
    }

    static func startServer(
        token: String? = "test-token",
        allow: [String],
        mux: MuxConfiguration = MuxConfiguration(),
        compression: Bool = true,
        http: HTTPTransportServerSettings = .init(),
        group: any EventLoopGroup = Self.group
    ) async throws -> TunnelServer {
        try await TunnelServer.start(
            configuration: .init(
                listenHost: "127.0.0.1",
                listenPort: 0,
                session: SessionConfiguration(
                    token: token,
                    authenticationRequired: token != nil,
                    mux: mux,
                    compression: CompressionSettings(enabled: compression)
                ),
                allowlist: Allowlist(entries: try allow.map { try Allowlist.Entry(parsing: $0) }),
                http: http
            ),
            group: group,
            logger: Self.logger
        )
    }

    static func connectClient(
        serverPort: Int,
        token: String? = "test-token",
        targets: [Int],
        path: String = "/culvert",
        compress: Bool = false,
        transport: TransportKind = .websocket,
        proxy: ProxyConfiguration? = nil,
        http: HTTPTransportClientSettings = .init(),
        connectTimeout: TimeAmount = .seconds(5),
        mux: MuxConfiguration = MuxConfiguration(),
        reconnect: ReconnectBackoff = ReconnectBackoff()
    ) async throws -> TunnelClient {
        try await TunnelClient.connect(
            configuration: .init(
                server: ServerEndpoint(host: "127.0.0.1", port: serverPort, pathPrefix: path),
                transport: transport,
                transportOptions: TransportOptions(connectTimeout: connectTimeout, proxy: proxy, http: http, logger: Self.logger),
                session: SessionConfiguration(token: token, mux: mux, compression: CompressionSettings(enabled: compress)),
                forwards: targets.map { ForwardSpec(bindPort: 0, target: .init(host: "127.0.0.1", port: $0)) },
                reconnect: reconnect
            ),
            group: Self.group,
            logger: Self.logger
        )
    }

    static func start(
        targets: [Int],
        transport: TransportKind = .websocket,
        proxy: ProxyConfiguration? = nil
    ) async throws -> TunnelHarness {
        let server = try await Self.startServer(allow: targets.map { "127.0.0.1:\($0)" })
        do {
            let client = try await Self.connectClient(
                serverPort: server.localAddress!.port!, targets: targets, transport: transport, proxy: proxy
            )
            return TunnelHarness(server: server, client: client)
        } catch {
            await server.shutdown(gracePeriod: .zero)
            throw error
        }
    }

    /// Runs `body` against a tunnel to a fresh echo target (client `compress`, server agreeing when
    /// `serverCompression`), then tears everything down.
    static func withEchoTunnel(
        compress: Bool,
        serverCompression: Bool = true,
        _ body: (_ client: TunnelClient, _ localPort: Int) async throws -> Void
    ) async throws {
        let echo = try await EchoServer.start(group: Self.group)
        let server = try await Self.startServer(allow: ["127.0.0.1:\(echo.port)"], compression: serverCompression)
        let client = try await Self.connectClient(
            serverPort: server.localAddress!.port!, targets: [echo.port], compress: compress
        )
        do {
            try await body(client, client.listenerAddresses[0].port!)
        } catch {
            await TunnelHarness(server: server, client: client).stop()
            try await echo.close()
            throw error
        }
        await TunnelHarness(server: server, client: client).stop()
        try await echo.close()
    }

    func stop() async {
        await self.client.shutdown(gracePeriod: .milliseconds(200))
        await self.server.shutdown(gracePeriod: .milliseconds(200))
    }
}

/// A server allowing some targets, and a client whose only listener is `listener` (a SOCKS5 or HTTP proxy) on a
/// free port: for the tests of listener kinds.
struct ListenerTunnel {
    let server: TunnelServer
    let client: TunnelClient
    /// The port the listener got.
    var port: Int { self.client.listenerAddresses[0].port! }

    static func start(allow: [String], listener: LocalListener) async throws -> ListenerTunnel {
        let server = try await TunnelHarness.startServer(allow: allow)
        var configuration = TunnelClient.Configuration(
            server: ServerEndpoint(host: "127.0.0.1", port: server.localAddress!.port!, pathPrefix: "/culvert"),
            transportOptions: TransportOptions(logger: TunnelHarness.logger),
            session: SessionConfiguration(token: "test-token"),
            forwards: []
        )
        configuration.listeners = [listener]
        do {
            let client = try await TunnelClient.connect(configuration: configuration, group: TunnelHarness.group, logger: TunnelHarness.logger)
            return ListenerTunnel(server: server, client: client)
        } catch {
            await server.shutdown(gracePeriod: .zero)
            throw error
        }
    }

    /// Streams the client's session opened so far (read on its loop).
    func streamsOpened() async throws -> Int {
        try await self.client.session.snapshot().statistics.streamsOpened
    }

    func stop() async {
        await TunnelHarness(server: self.server, client: self.client).stop()
    }
}

extension SessionHandle {
    /// Evaluates `condition` on what the session reports now, read on its loop (false if the loop is gone).
    func onLoop(_ condition: @escaping @Sendable (SessionSnapshot) -> Bool) async -> Bool {
        (try? await self.snapshot()).map(condition) ?? false
    }
}

extension TunnelHarness {
    /// The transport error a client meets connecting over `transport` through `proxy` (recorded as an issue, and
    /// nil, when it connects or fails otherwise).
    static func transportError(
        connecting transport: TransportKind, proxy: ProxyConfiguration, serverPort: Int, connectTimeout: TimeAmount = .seconds(5)
    ) async -> TransportError? {
        do {
            let client = try await Self.connectClient(
                serverPort: serverPort, targets: [], transport: transport, proxy: proxy, connectTimeout: connectTimeout
            )
            await client.shutdown(gracePeriod: .zero)
            Issue.record("connected through \(proxy) over \(transport) although it should have failed")
            return nil
        } catch let SessionError.transport(error) {
            return error
        } catch {
            Issue.record("unexpected error \(error)")
            return nil
        }
    }
}
