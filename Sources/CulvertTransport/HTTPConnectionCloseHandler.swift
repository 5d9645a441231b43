import NIOCore
import NIOHTTP1

/// Honours a request that is not keep-alive (`Connection: close`, or HTTP/1.0 without `keep-alive`): its response
/// says `Connection: close` and the connection is closed once the response has been written (RFC 9112 §9.6).
///
/// Proxies rely on it: tinyproxy sends every request with `Connection: close`, yet relays the client's next request
/// on the same upstream connection if the server leaves it open, and that request then meets a parser that has
/// seen the end of the connection ("data received after completed connection: close message", 400). Removed with
/// the other HTTP handlers when the connection is upgraded.
final class HTTPConnectionCloseHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// Whether each request not yet answered keeps the connection alive, oldest first (requests may be pipelined).
    private var keepAlive: [Bool] = []

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head(let head) = self.unwrapInboundIn(data) { self.keepAlive.append(head.isKeepAlive) }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let closing = self.keepAlive.first == false
        switch self.unwrapOutboundIn(data) {
        case .head(var head) where closing && head.status.code >= 200:
            head.headers.replaceOrAdd(name: "Connection", value: "close")
            context.write(self.wrapOutboundOut(.head(head)), promise: promise)
        case .end where !self.keepAlive.isEmpty:
            self.keepAlive.removeFirst()
            guard closing else {
                context.write(data, promise: promise)
                return
            }
            let written = promise ?? context.eventLoop.makePromise()
            context.write(data, promise: written)
            written.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        default:
            context.write(data, promise: promise)
        }
    }
}
