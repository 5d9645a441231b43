import NIOCore
import NIOHTTP1

/// Closes a connection that does not deliver a complete request head in time: `firstHead` from the connection's
/// start (a slow sender that trickles its headers, or a connection that sends nothing), `betweenRequests` from the
/// end of a response to the next head of a keep-alive connection. No timer runs while a request is being answered,
/// however long its response streams. Removed with the other HTTP handlers when the connection is upgraded.
final class HTTPRequestHeadTimeoutHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart

    private let firstHead: TimeAmount
    private let betweenRequests: TimeAmount
    private var timer: Scheduled<Void>?

    init(firstHead: TimeAmount, betweenRequests: TimeAmount) {
        self.firstHead = firstHead
        self.betweenRequests = betweenRequests
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.arm(context: context, self.firstHead)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head = self.unwrapInboundIn(data) {
            self.timer?.cancel()
            self.timer = nil
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = self.unwrapOutboundIn(data) { self.arm(context: context, self.betweenRequests) }
        context.write(data, promise: promise)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
        context.fireChannelInactive()
    }

    private func arm(context: ChannelHandlerContext, _ timeout: TimeAmount) {
        self.timer?.cancel()
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        self.timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
            loopBound.value.close(promise: nil)
        }
    }
}
