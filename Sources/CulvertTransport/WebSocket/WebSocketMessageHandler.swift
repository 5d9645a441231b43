import NIOCore
import NIOWebSocket

/// Turns WebSocket frames into opaque `ByteBuffer` messages and back (RFC 6455).
///
/// Binary data frames and their continuations are passed up as they arrive (the session above reads a byte
/// stream, so fragments need no reassembly and cost no buffer). Pings are answered, a close is echoed and ends the
/// connection, and text frames or (on a server) unmasked frames end it with the RFC's close codes. A client masks
/// every frame it sends with a fresh key.
public final class WebSocketMessageHandler: ChannelDuplexHandler {
    public typealias InboundIn = WebSocketFrame
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = WebSocketFrame

    private let isClient: Bool
    private var inFragmentedMessage = false
    private var closeSent = false

    public init(isClient: Bool) {
        self.isClient = isClient
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = self.unwrapInboundIn(data)
        if !self.isClient && frame.maskKey == nil {
            self.closeWithError(context: context, code: .protocolError, reason: "client frames must be masked")
            return
        }
        switch frame.opcode {
        case .binary:
            guard !self.inFragmentedMessage else {
                self.closeWithError(context: context, code: .protocolError, reason: "new message inside a fragmented one")
                return
            }
            self.inFragmentedMessage = !frame.fin
            self.forwardPayload(of: frame, context: context)
        case .continuation:
            guard self.inFragmentedMessage else {
                self.closeWithError(context: context, code: .protocolError, reason: "continuation without a message")
                return
            }
            self.inFragmentedMessage = !frame.fin
            self.forwardPayload(of: frame, context: context)
        case .ping:
            var pong = WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)
            if self.isClient { pong.maskKey = .random() }
            context.writeAndFlush(self.wrapOutboundOut(pong), promise: nil)
        case .pong:
            break
        case .connectionClose:
            self.receivedClose(context: context, frame: frame)
        case .text:
            self.closeWithError(context: context, code: .unacceptableData, reason: "culvert carries binary messages only")
        default:
            self.closeWithError(context: context, code: .protocolError, reason: "unknown opcode")
        }
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let message = self.unwrapOutboundIn(data)
        var frame = WebSocketFrame(fin: true, opcode: .binary, data: message)
        if self.isClient { frame.maskKey = .random() }
        context.write(self.wrapOutboundOut(frame), promise: promise)
    }

    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .all, !self.closeSent, context.channel.isActive else {
            context.close(mode: mode, promise: promise)
            return
        }
        // A clean close: say so with a close frame, then close the TCP connection.
        self.closeSent = true
        var data = context.channel.allocator.buffer(capacity: 2)
        data.write(webSocketErrorCode: .normalClosure)
        var frame = WebSocketFrame(fin: true, opcode: .connectionClose, data: data)
        if self.isClient { frame.maskKey = .random() }
        context.writeAndFlush(self.wrapOutboundOut(frame)).assumeIsolated().whenComplete { _ in
            context.close(mode: .all, promise: promise)
        }
    }

    private func forwardPayload(of frame: WebSocketFrame, context: ChannelHandlerContext) {
        let payload = frame.unmaskedData
        if payload.readableBytes > 0 {
            context.fireChannelRead(self.wrapInboundOut(payload))
        }
    }

    private func receivedClose(context: ChannelHandlerContext, frame: WebSocketFrame) {
        if self.closeSent {
            context.close(promise: nil)
            return
        }
        self.closeSent = true
        var echo = WebSocketFrame(fin: true, opcode: .connectionClose, data: frame.unmaskedData)
        if self.isClient { echo.maskKey = .random() }
        context.writeAndFlush(self.wrapOutboundOut(echo)).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    private func closeWithError(context: ChannelHandlerContext, code: WebSocketErrorCode, reason: String) {
        context.fireErrorCaught(TransportError.protocolViolation("WebSocket: \(reason)"))
        guard !self.closeSent else {
            context.close(promise: nil)
            return
        }
        self.closeSent = true
        var data = context.channel.allocator.buffer(capacity: 2)
        data.write(webSocketErrorCode: code)
        var frame = WebSocketFrame(fin: true, opcode: .connectionClose, data: data)
        if self.isClient { frame.maskKey = .random() }
        context.writeAndFlush(self.wrapOutboundOut(frame)).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }
}
