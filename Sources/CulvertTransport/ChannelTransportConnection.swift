public import NIOCore

/// A ``TransportConnection`` over a channel whose pipeline already turns the wire into `ByteBuffer` messages; it
/// is the last handler of that pipeline.
public final class ChannelTransportConnection: TransportConnection, ChannelInboundHandler {
    // All state is touched only on `eventLoop` (see `TransportConnection`).
    public typealias InboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    public let kind: TransportKind
    public let eventLoop: any EventLoop
    public let peerDescription: String
    public let peerAddress: SocketAddress?
    private let channel: any Channel
    private var context: ChannelHandlerContext?
    private let relay = TransportDelegateRelay()
    private var firstError: (any Error)?

    public init(kind: TransportKind, channel: any Channel) {
        self.kind = kind
        self.channel = channel
        self.eventLoop = channel.eventLoop
        self.peerAddress = channel.remoteAddress
        self.peerDescription = channel.remoteAddress.map(\.displayText) ?? "unknown peer"
    }

    public var isWritable: Bool { self.channel.isWritable }

    public func start(delegate: any TransportConnectionDelegate) {
        self.eventLoop.preconditionInEventLoop()
        self.relay.start(delegate, for: self)
    }

    public func send(_ message: ByteBuffer) {
        guard let context = self.context else { return }
        context.writeAndFlush(self.wrapOutboundOut(message), promise: nil)
    }

    /// Writes the parts one by one and flushes once: the socket sends them with one `writev` (a WebSocket pipeline
    /// frames them as one message).
    public func send(parts: [ByteBuffer]) {
        guard let context = self.context else { return }
        for part in parts { context.write(self.wrapOutboundOut(part), promise: nil) }
        context.flush()
    }

    public func close() {
        self.channel.close(promise: nil)
    }

    /// Lifts the pre-authentication byte budget of a server connection (a client's has none).
    public func sessionAuthenticated(key: [UInt8]) {
        let pipeline = self.channel.pipeline.syncOperations
        if let limit = try? pipeline.handler(type: PreAuthenticationLimitHandler.self) {
            pipeline.removeHandler(limit, promise: nil)
        }
    }

    // MARK: ChannelInboundHandler

    public func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.relay.deliver(self.unwrapInboundIn(data), from: self)
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        self.relay.readComplete(from: self)
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.relay.writabilityChanged(of: self)
        context.fireChannelWritabilityChanged()
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if self.firstError == nil { self.firstError = error }
        context.close(promise: nil)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        self.relay.markClosed(error: self.firstError)
        self.relay.reportClose(for: self)
        context.fireChannelInactive()
    }
}
