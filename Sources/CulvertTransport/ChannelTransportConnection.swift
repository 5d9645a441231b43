import NIOCore

/// A ``TransportConnection`` over a channel whose pipeline already turns the wire into `ByteBuffer` messages; it
/// is the last handler of that pipeline.
public final class ChannelTransportConnection: TransportConnection, ChannelInboundHandler, @unchecked Sendable {
    // @unchecked: all state is touched only on `eventLoop` (see `TransportConnection`).
    public typealias InboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    public let kind: TransportKind
    public let eventLoop: any EventLoop
    public let peerDescription: String
    private let channel: any Channel
    private var context: ChannelHandlerContext?
    private var delegate: (any TransportConnectionDelegate)?
    private var earlyMessages: [ByteBuffer] = []
    private var closeError: (any Error)?
    private var closed = false

    public init(kind: TransportKind, channel: any Channel) {
        self.kind = kind
        self.channel = channel
        self.eventLoop = channel.eventLoop
        self.peerDescription = channel.remoteAddress.map { "\($0)" } ?? "unknown peer"
    }

    public var isWritable: Bool { self.channel.isWritable }

    public func start(delegate: any TransportConnectionDelegate) {
        self.eventLoop.preconditionInEventLoop()
        self.delegate = delegate
        let early = self.earlyMessages
        self.earlyMessages = []
        for message in early { delegate.transport(self, didReceive: message) }
        if !early.isEmpty { delegate.transportDidReadComplete(self) }
        if self.closed { self.reportClosed() }
    }

    public func send(_ message: ByteBuffer) {
        guard let context = self.context else { return }
        context.writeAndFlush(self.wrapOutboundOut(message), promise: nil)
    }

    public func close() {
        self.channel.close(promise: nil)
    }

    // MARK: ChannelInboundHandler

    public func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let message = self.unwrapInboundIn(data)
        if let delegate = self.delegate {
            delegate.transport(self, didReceive: message)
        } else {
            self.earlyMessages.append(message)
        }
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        self.delegate?.transportDidReadComplete(self)
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.delegate?.transportWritabilityChanged(self)
        context.fireChannelWritabilityChanged()
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if self.closeError == nil { self.closeError = error }
        context.close(promise: nil)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        self.closed = true
        if self.delegate != nil { self.reportClosed() }
        context.fireChannelInactive()
    }

    private func reportClosed() {
        let delegate = self.delegate
        self.delegate = nil
        delegate?.transportDidClose(self, error: self.closeError)
    }
}
