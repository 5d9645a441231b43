#if canImport(Glibc)
import Glibc
#endif
public import NIOCore
public import NIOWebSocket

/// Turns WebSocket frames into opaque `ByteBuffer` messages and back (RFC 6455).
///
/// Binary data frames and their continuations are passed up as they arrive (the session above reads a byte
/// stream, so fragments need no reassembly and cost no buffer). Pings are answered, a close is echoed and ends the
/// connection, and text frames or (on a server) unmasked frames end it with the RFC's close codes. A client masks
/// every frame it sends with a fresh key. Outbound frames are encoded here by ``WebSocketFrameWriter`` (so the
/// pipeline has no `WebSocketFrameEncoder`), which masks eight bytes at a time.
public final class WebSocketMessageHandler: ChannelDuplexHandler {
    public typealias InboundIn = WebSocketFrame
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private let isClient: Bool
    private var maskKeys = MaskKeySource()
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
        // No extension is negotiated, so every reserved bit must be clear (RFC 6455 section 5.2).
        if frame.rsv1 || frame.rsv2 || frame.rsv3 {
            self.closeWithError(context: context, code: .protocolError, reason: "reserved bits set without a negotiated extension")
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
            self.writeFrame(context: context, opcode: .pong, payload: Self.unmasked(frame), promise: nil)
            context.flush()
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

    /// Frame decoding errors (oversized, malformed frames) end the connection with the matching close code.
    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? NIOWebSocketError, !self.closeSent {
            let code: WebSocketErrorCode = error == .multiByteControlFrameLength || error == .fragmentedControlFrame
                ? .protocolError : .messageTooLarge
            self.closeSent = true
            var data = context.channel.allocator.buffer(capacity: 2)
            data.write(webSocketErrorCode: code)
            self.writeFrameThenClose(context: context, opcode: .connectionClose, payload: data)
            context.fireErrorCaught(TransportError.protocolViolation("WebSocket: \(error)"))
            return
        }
        context.fireErrorCaught(error)
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        self.writeFrame(context: context, opcode: .binary, payload: self.unwrapOutboundIn(data), promise: promise)
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
        let written = context.eventLoop.makePromise(of: Void.self)
        self.writeFrame(context: context, opcode: .connectionClose, payload: data, promise: written)
        context.flush()
        written.futureResult.assumeIsolated().whenComplete { _ in
            context.close(mode: .all, promise: promise)
        }
    }

    private func forwardPayload(of frame: WebSocketFrame, context: ChannelHandlerContext) {
        let payload = Self.unmasked(frame)
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
        self.writeFrameThenClose(context: context, opcode: .connectionClose, payload: Self.unmasked(frame))
    }

    /// Sends a close frame with `code`, then reports the error. The close frame goes first: the error makes the
    /// handlers above close the channel, and that close must not be the first to speak (it would say 1000,
    /// a normal closure).
    private func closeWithError(context: ChannelHandlerContext, code: WebSocketErrorCode, reason: String) {
        if self.closeSent {
            context.close(promise: nil)
        } else {
            self.closeSent = true
            var data = context.channel.allocator.buffer(capacity: 2)
            data.write(webSocketErrorCode: code)
            self.writeFrameThenClose(context: context, opcode: .connectionClose, payload: data)
        }
        context.fireErrorCaught(TransportError.protocolViolation("WebSocket: \(reason)"))
    }

    private func writeFrameThenClose(context: ChannelHandlerContext, opcode: WebSocketOpcode, payload: ByteBuffer) {
        let written = context.eventLoop.makePromise(of: Void.self)
        self.writeFrame(context: context, opcode: opcode, payload: payload, promise: written)
        context.flush()
        written.futureResult.assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    /// Writes one whole frame; clients mask it with a fresh key.
    private func writeFrame(
        context: ChannelHandlerContext,
        opcode: WebSocketOpcode,
        payload: ByteBuffer,
        promise: EventLoopPromise<Void>?
    ) {
        let (head, body) = WebSocketFrameWriter.encode(
            opcode: opcode,
            payload: payload,
            maskKey: self.isClient ? self.maskKeys.next() : nil,
            allocator: context.channel.allocator
        )
        if let body {
            context.write(self.wrapOutboundOut(head), promise: nil)
            context.write(self.wrapOutboundOut(body), promise: promise)
        } else {
            context.write(self.wrapOutboundOut(head), promise: promise)
        }
    }

    /// The frame's payload with any mask removed (a copy when masked, the payload itself otherwise).
    static func unmasked(_ frame: WebSocketFrame) -> ByteBuffer {
        guard let key = frame.maskKey else { return frame.data }
        var output = ByteBufferAllocator().buffer(capacity: frame.data.readableBytes)
        WebSocketFrameWriter.appendMasked(frame.data, key: key, to: &output)
        return output
    }
}

/// Mask keys from the system's secure generator, fetched 1024 at a time so that a key costs no system call.
struct MaskKeySource {
    private typealias GetRandom = @convention(c) (UnsafeMutableRawPointer?, Int, UInt32) -> Int
    /// glibc's `getrandom` (the Glibc module does not export sys/random.h, so it is looked up by name).
    private static let getRandom: GetRandom? = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "getrandom").map {
        unsafeBitCast($0, to: GetRandom.self)
    }
    private var pool: [UInt8] = []
    private var index = 0

    mutating func next() -> WebSocketMaskingKey {
        if self.index + 4 > self.pool.count {
            // One system call for 1,024 keys: SystemRandomNumberGenerator asks the kernel for every 8 bytes, which
            // cost a getrandom per two messages sent.
            self.pool = [UInt8](repeating: 0, count: 4096)
            let filled = self.pool.withUnsafeMutableBytes { Self.getRandom?($0.baseAddress, $0.count, 0) ?? 0 }
            if filled != self.pool.count {
                var generator = SystemRandomNumberGenerator()
                self.pool = (0..<512).flatMap { _ in withUnsafeBytes(of: generator.next() as UInt64) { Array($0) } }
            }
            self.index = 0
        }
        defer { self.index += 4 }
        return WebSocketMaskingKey(self.pool[self.index..<(self.index + 4)])!
    }
}
