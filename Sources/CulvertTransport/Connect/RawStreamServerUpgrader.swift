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
        guard upgradeRequest.method == .GET, upgradeRequest.pathWithoutQuery == self.path,
            !HTTPServerUpgrade.announcesBody(upgradeRequest)
        else {
            return channel.eventLoop.makeFailedFuture(HTTPServerUpgradeErrors.invalidHTTPOrdering)
        }
        let headers = HTTPServerUpgrade.responseHeaders(initialResponseHeaders, protocolName: ConnectClientTransport.upgradeProtocol)
        return channel.eventLoop.makeSucceededFuture(headers)
    }

    func upgrade(context: ChannelHandlerContext, upgradeRequest: HTTPRequestHead) -> EventLoopFuture<Void> {
        context.eventLoop.makeCompletedFuture {
            self.onConnection(try HTTPServerUpgrade.installTransport(kind: .connect, context: context))
        }
    }
}
