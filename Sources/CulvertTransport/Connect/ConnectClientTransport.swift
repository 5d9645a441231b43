public import NIOCore
import NIOHTTP1

/// The CONNECT transport: through a forward proxy, `CONNECT server:port`; then (or directly without a proxy) an
/// HTTP/1.1 upgrade to `culvert` at `<prefix>/raw`, after which the connection carries the session's bytes with no
/// framing at all.
///
/// The upgrade keeps the first bytes through the tunnel plain HTTP, which intercepting proxies that inspect
/// CONNECT tunnels let through, and lets the one server listener recognise the transport.
public struct ConnectClientTransport: ClientTransport {
    public let kind = TransportKind.connect
    public let options: TransportOptions

    /// The protocol name in `Upgrade`.
    public static let upgradeProtocol = "culvert"

    public init(options: TransportOptions) {
        self.options = options
    }

    public func connect(to endpoint: ServerEndpoint, on eventLoop: any EventLoop) -> EventLoopFuture<any TransportConnection> {
        // Inside the CONNECT tunnel the request goes to the server itself: origin-form, no proxy credentials; with
        // the session's cookies, so that a balancer in front of several servers sends a resumption to its own.
        var innerRoute = HTTPRoute(endpoint: endpoint, proxy: nil, extraHeaders: self.options.extraHeaders, tls: self.options.tls)
        innerRoute.cookies = self.options.cookies
        let route = HTTPRoute(endpoint: endpoint, options: self.options)
        var headers = innerRoute.baseHeaders()
        headers.add(name: "Upgrade", value: Self.upgradeProtocol)
        headers.add(name: "Connection", value: "Upgrade")
        let request = HTTPRequestHead(version: .http1_1, method: .GET, uri: innerRoute.requestTarget("raw"), headers: headers)
        return HTTPUpgradeDialer.connect(
            kind: .connect,
            route: route,
            options: self.options,
            throughConnectTunnel: true,
            request: request,
            on: eventLoop,
            validate: { head in
                head.headers.first(name: "Upgrade")?.lowercased() == Self.upgradeProtocol
                    ? nil : "101 response without 'Upgrade: \(Self.upgradeProtocol)'"
            },
            install: { pipeline, channel in
                let connection = ChannelTransportConnection(kind: .connect, channel: channel)
                try pipeline.addHandler(connection)
                return connection
            }
        )
    }
}
