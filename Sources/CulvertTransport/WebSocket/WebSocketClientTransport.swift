public import NIOCore
import NIOHTTP1
import NIOWebSocket

/// Dials the server and upgrades the connection to WebSocket (RFC 6455) at `<prefix>/ws`; through a forward
/// proxy, with an absolute-form request that the proxy must pass on with its `Upgrade` header.
public struct WebSocketClientTransport: ClientTransport {
    public let kind = TransportKind.websocket
    public let options: TransportOptions

    public init(options: TransportOptions) {
        self.options = options
    }

    public func connect(to endpoint: ServerEndpoint, on eventLoop: any EventLoop) -> EventLoopFuture<any TransportConnection> {
        let route = HTTPRoute(endpoint: endpoint, options: self.options)
        let requestKey = Base64.encode((0..<16).map { _ in UInt8.random(in: 0...255) })
        var headers = route.baseHeaders()
        headers.add(name: "Upgrade", value: "websocket")
        headers.add(name: "Connection", value: "Upgrade")
        headers.add(name: "Sec-WebSocket-Key", value: requestKey)
        headers.add(name: "Sec-WebSocket-Version", value: "13")
        let request = HTTPRequestHead(version: .http1_1, method: .GET, uri: route.requestTarget("ws"), headers: headers)
        let maximumMessageSize = self.options.maximumMessageSize
        return HTTPUpgradeDialer.connect(
            kind: .websocket,
            route: route,
            options: self.options,
            throughConnectTunnel: false,
            request: request,
            on: eventLoop,
            validate: { head in
                guard head.headers.first(name: "Upgrade")?.lowercased() == "websocket" else {
                    return "101 response without 'Upgrade: websocket'"
                }
                guard head.headers.first(name: "Sec-WebSocket-Accept") == WebSocketAccept.value(forKey: requestKey) else {
                    return "Sec-WebSocket-Accept does not match the key"
                }
                return nil
            },
            install: { pipeline, channel in
                let connection = ChannelTransportConnection(kind: .websocket, channel: channel)
                try pipeline.addHandlers([
                    WebSocketMessageHandler(isClient: true, maximumFrameSize: maximumMessageSize),
                    connection,
                ])
                return connection
            }
        )
    }
}
