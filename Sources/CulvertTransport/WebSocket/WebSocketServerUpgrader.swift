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
        guard upgradeRequest.pathWithoutQuery == self.path else {
            return channel.eventLoop.makeFailedFuture(NIOWebSocketUpgradeError.unsupportedWebSocketTarget)
        }
        guard keys.count == 1, upgradeRequest.headers["Sec-WebSocket-Version"] == ["13"] else {
            return channel.eventLoop.makeFailedFuture(NIOWebSocketUpgradeError.invalidUpgradeHeader)
        }
        var headers = initialResponseHeaders
        headers.replaceOrAdd(name: "Upgrade", value: "websocket")
        headers.replaceOrAdd(name: "Connection", value: "upgrade")
        headers.add(name: "Sec-WebSocket-Accept", value: WebSocketAccept.value(forKey: keys[0]))
        headers.add(name: "Cache-Control", value: "no-store")
        headers.add(name: "Server", value: "culvert/\(CulvertVersion.string)")
        return channel.eventLoop.makeSucceededFuture(headers)
    }

    func upgrade(context: ChannelHandlerContext, upgradeRequest: HTTPRequestHead) -> EventLoopFuture<Void> {
        context.eventLoop.makeCompletedFuture {
            let pipeline = context.pipeline.syncOperations
            if let router = try? pipeline.handler(type: HTTPTransportRequestHandler.self) {
                pipeline.removeHandler(router, promise: nil)
            }
            let connection = ChannelTransportConnection(kind: .websocket, channel: context.channel)
            try pipeline.addHandlers([
                ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: self.maximumFrameSize)),
                WebSocketMessageHandler(isClient: false),
                connection,
            ])
            self.onConnection(connection)
        }
    }
}
