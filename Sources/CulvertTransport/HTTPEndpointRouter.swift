import NIOCore
import NIOHTTP1

/// Answers HTTP requests that no transport took: 426 for a WebSocket endpoint reached without `Upgrade` (a proxy
/// stripped it), 404 for anything else, so that a client and the negotiator can tell the two apart.
final class HTTPEndpointRouter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let pathPrefix: String
    private var pendingHead: HTTPRequestHead?

    init(pathPrefix: String) {
        self.pathPrefix = pathPrefix
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.pendingHead = head
        case .body:
            break
        case .end:
            guard let head = self.pendingHead else { return }
            self.pendingHead = nil
            if head.pathWithoutQuery == self.pathPrefix + "/ws" {
                self.respond(context: context, head: head, status: .upgradeRequired,
                             body: "culvert: this endpoint needs a WebSocket upgrade\n", extra: [("Upgrade", "websocket")])
            } else {
                self.respond(context: context, head: head, status: .notFound, body: "culvert: no such endpoint\n")
            }
        }
    }

    private func respond(
        context: ChannelHandlerContext,
        head: HTTPRequestHead,
        status: HTTPResponseStatus,
        body: String,
        extra: [(String, String)] = []
    ) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
        headers.add(name: "Content-Length", value: String(body.utf8.count))
        headers.add(name: "Cache-Control", value: "no-store")
        for (name, value) in extra { headers.add(name: name, value: value) }
        let response = HTTPResponseHead(version: head.version, status: status, headers: headers)
        context.write(self.wrapOutboundOut(.head(response)), promise: nil)
        context.write(self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
        context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
    }
}
