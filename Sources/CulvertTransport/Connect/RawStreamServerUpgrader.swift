import NIOCore
import NIOHTTP1

/// Accepts `Upgrade: culvert` at `<prefix>/raw` (the CONNECT transport): after the 101 the connection carries
/// the session's bytes as they are, into a ``ChannelTransportConnection``.
struct RawStreamServerUpgrader: HTTPServerProtocolUpgrader, Sendable {
    let path: String
    let onConnection: @Sendable (any TransportConnection) -> Void

    var supportedProtocol: String { ConnectClientTransport.upgradeProtocol }
    var requiredUpgradeHeaders: [String] { [] }

    func buildUpgradeResponse(
        channel: any Channel,
        upgradeRequest: HTTPRequestHead,
        initialResponseHeaders: HTTPHeaders
    ) -> EventLoopFuture<HTTPHeaders> {
        guard upgradeRequest.pathWithoutQuery == self.path else {
            return channel.eventLoop.makeFailedFuture(HTTPServerUpgradeErrors.invalidHTTPOrdering)
        }
        var headers = initialResponseHeaders
        headers.replaceOrAdd(name: "Upgrade", value: ConnectClientTransport.upgradeProtocol)
        headers.replaceOrAdd(name: "Connection", value: "upgrade")
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
            let connection = ChannelTransportConnection(kind: .connect, channel: context.channel)
            try pipeline.addHandler(connection)
            self.onConnection(connection)
        }
    }
}
