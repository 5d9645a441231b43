import NIOCore

/// Closes an upgraded server connection whose peer sends more than `budget` bytes before the session above has
/// authenticated it; removed by ``ChannelTransportConnection/sessionAuthenticated(key:)``. It sits in front of every
/// decoder, so nothing a stranger sends is buffered past the budget.
final class PreAuthenticationLimitHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let budget: Int
    private var received = 0

    init(budget: Int) {
        self.budget = budget
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.received += self.unwrapInboundIn(data).readableBytes
        guard self.received <= self.budget else {
            context.fireErrorCaught(TransportError.protocolViolation(
                "the peer sent more than \(self.budget) bytes before authenticating"))
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(data)
    }
}
