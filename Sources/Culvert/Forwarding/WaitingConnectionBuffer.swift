import NIOCore

/// Holds what arrives on a local connection accepted before the tunnel exists: NIO reads a connection to its end
/// when the peer half-closes it, whatever auto-read says, so a client that writes and shuts its output at once
/// (`printf … | nc`) would lose its bytes and its EOF to an empty pipeline. Once the stream handler sits behind it,
/// removing this handler replays them to it in order.
final class WaitingConnectionBuffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private enum Held {
        case read(NIOAny)
        case readComplete
        case event(Any)
        case inactive
    }

    private var held: [Held] = []

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.held.append(.read(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.held.append(.readComplete)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        self.held.append(.event(event))
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.held.append(.inactive)
    }

    func removeHandler(context: ChannelHandlerContext, removalToken: ChannelHandlerContext.RemovalToken) {
        let held = self.held
        self.held = []
        for item in held {
            switch item {
            case .read(let data): context.fireChannelRead(data)
            case .readComplete: context.fireChannelReadComplete()
            case .event(let event): context.fireUserInboundEventTriggered(event)
            case .inactive: context.fireChannelInactive()
            }
        }
        context.leavePipeline(removalToken: removalToken)
    }
}
