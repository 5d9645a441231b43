import NIOCore
import NIOHTTP1
import NIOWebSocket

/// Accepts RFC 6455 upgrades at `<prefix>/ws` and installs Culvert's WebSocket pipeline: NIO's frame decoder, then
/// ``WebSocketMessageHandler`` (which encodes frames itself) and a ``ChannelTransportConnection``.
///
/// NIO's own upgrader always adds its frame encoder, which would stand in the way of the faster encoder here.
struct WebSocketServerUpgrader: HTTPServerProtocolUpgrader, Sendable {
    let path: String
    let maximumFrameSize: Int
    let onConnection: @Sendable (any TransportConnection) -> Void

    var supportedProtocol: String { "websocket" }
    /// Headers that must be named in `Connection` (none for WebSocket; the key and version are checked below).
    var requiredUpgradeHeaders: [String] { [] }

    func buildUpgradeResponse(
        channel: any Channel,
        upgradeRequest: HTTPRequestHead,
        initialResponseHeaders: HTTPHeaders
    ) -> EventLoopFuture<HTTPHeaders> {
        let keys = upgradeRequest.headers["Sec-WebSocket-Key"]
        // RFC 6455 section 4.1: the opening handshake is a GET; anything else is not an upgrade.
        guard upgradeRequest.method == .GET, upgradeRequest.pathWithoutQuery == self.path,
            !HTTPServerUpgrade.announcesBody(upgradeRequest)
        else {
            return channel.eventLoop.makeFailedFuture(NIOWebSocketUpgradeError.unsupportedWebSocketTarget)
        }
        guard keys.count == 1, upgradeRequest.headers["Sec-WebSocket-Version"] == ["13"] else {
            return channel.eventLoop.makeFailedFuture(NIOWebSocketUpgradeError.invalidUpgradeHeader)
        }
        var headers = HTTPServerUpgrade.responseHeaders(initialResponseHeaders, protocolName: "websocket")
        headers.add(name: "Sec-WebSocket-Accept", value: WebSocketAccept.value(forKey: keys[0]))
        return channel.eventLoop.makeSucceededFuture(headers)
    }

    func upgrade(context: ChannelHandlerContext, upgradeRequest: HTTPRequestHead) -> EventLoopFuture<Void> {
        context.eventLoop.makeCompletedFuture {
            let connection = try HTTPServerUpgrade.installTransport(
                kind: .websocket,
                context: context,
                handlers: [
                    WebSocketMessageHandler(isClient: false, maximumFrameSize: self.maximumFrameSize),
                ]
            )
            self.onConnection(connection)
        }
    }
}
