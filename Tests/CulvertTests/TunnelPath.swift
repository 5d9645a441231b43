import CulvertTools
import CulvertTransport
import NIOPosix
import Testing

/// One way from client to server for the transport matrix: a transport, directly or through a forward proxy
/// that the test starts.
struct TunnelPath: Sendable, CustomTestStringConvertible {
    enum Proxy: String, Sendable {
        case direct
        /// tinyproxy from its Debian package, as users meet it.
        case tinyproxy
        /// The Swift test proxy, which also passes `Upgrade`.
        case testProxy = "test proxy"
    }

    let transport: TransportKind
    let proxy: Proxy

    var testDescription: String { "\(self.transport) \(self.proxy == .direct ? "direct" : "via \(self.proxy.rawValue)")" }

    /// Every transport direct and through both proxies, except WebSocket through tinyproxy, which strips
    /// `Upgrade` (``TransportMatrixTests/webSocketThroughTinyproxyFailsWithUpgradeStripped()`` checks that).
    static let all: [TunnelPath] = TransportKind.allCases.flatMap { transport in
        [Proxy.direct, .tinyproxy, .testProxy].compactMap { proxy in
            transport == .websocket && proxy == .tinyproxy ? nil : TunnelPath(transport: transport, proxy: proxy)
        }
    }

    /// Runs `body` with the proxy of this path started (nil when direct), then stops it.
    func withProxy<T>(_ body: (ProxyConfiguration?) async throws -> T) async throws -> T {
        switch self.proxy {
        case .direct:
            return try await body(nil)
        case .tinyproxy:
            let tinyproxy = try await startTinyproxy()
            defer { tinyproxy.stop() }
            return try await body(ProxyConfiguration(host: "127.0.0.1", port: tinyproxy.port))
        case .testProxy:
            let proxy = try await FaultProxy.start(group: MultiThreadedEventLoopGroup.singleton)
            do {
                let result = try await body(ProxyConfiguration(host: "127.0.0.1", port: proxy.port))
                try await proxy.close()
                return result
            } catch {
                try? await proxy.close()
                throw error
            }
        }
    }
}
