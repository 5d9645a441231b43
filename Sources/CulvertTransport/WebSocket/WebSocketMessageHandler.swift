#if canImport(Glibc)
import Glibc
#endif
public import NIOCore
import NIOWebSocket

/// Turns the bytes of a WebSocket connection into opaque `ByteBuffer` messages and back (RFC 6455).
///
/// Frames are read here by ``WebSocketFrameParser`` straight from the socket's bytes and written by
/// ``WebSocketFrameWriter`` (the pipeline has neither NIO's frame decoder nor its encoder), so a message costs no
/// frame object: a client's downstream payload goes up as a slice of the bytes read, a server unmasks into one
/// buffer it reuses, and the buffer for outbound headers (and a client's masked copy) is reused as soon as the
/// socket has let go of it. The payloads of binary data frames and their continuations are passed up piece by piece
/// as the socket delivers them, not gathered into whole frames (the session above reads a byte stream, so neither
/// frames nor fragments need reassembly); only a frame's header and a control frame are ever held back. Pings are
/// answered, a close is echoed and ends the connection, and text frames, reserved bits, unknown opcodes, oversized
/// or malformed frames and (on a server) unmasked frames end it with the RFC's close codes. A client masks every
/// frame it sends with a fresh key.
public final class WebSocketMessageHandler: ChannelDuplexHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private let isClient: Bool
    private let parser: WebSocketFrameParser
    private var maskKeys = MaskKeySource()
    /// The start of a frame whose header (or, for a control frame, whole frame) has not arrived yet.
    private var partialFrame: ByteBuffer?
    /// The data frame whose payload is still arriving.
    private var streamedPayload: StreamedPayload?
    /// Where a server unmasks payloads; reused once the session above has let go of the last one.
    private var unmaskedData = ByteBuffer()
    /// Where headers (and a client's masked payloads) are written; reused once the socket has sent the last one.
    private var outboundFrame = ByteBuffer()
    /// Payloads written since the last flush: they go out as one binary message when it comes (the session writes
    /// a batch as DATA headers and payloads, and the flush that ends it).
    private var unflushedParts: [ByteBuffer] = []
    private var unflushedPromise: EventLoopPromise<Void>?
    private var inFragmentedMessage = false
    /// A close was received or the peer broke the protocol: nothing after it is read.
    private var inputEnded = false
    private var closeSent = false

    /// `maximumFrameSize` bounds one frame's payload; a larger one ends the connection with 1009 (message too big).
    public init(isClient: Bool, maximumFrameSize: Int = 16 * 1024 * 1024) {
        self.isClient = isClient
        self.parser = WebSocketFrameParser(maximumFrameSize: maximumFrameSize)
    }

    /// The bytes kept for a frame that has not arrived whole (for tests: they must stay within about one frame).
    var bufferedCapacity: Int { self.partialFrame?.capacity ?? 0 }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.inputEnded else { return }
        var bytes = self.unwrapInboundIn(data)
        if var partial = self.partialFrame {
            self.partialFrame = nil
            // The frames read before it go first (a move of the partial frame's bytes, once): otherwise a stream of
            // frames that end mid-read would grow the buffer, and copy it, without bound.
            partial.discardReadBytes()
            partial.writeBuffer(&bytes)
            bytes = partial
        }
        while !self.inputEnded {
            if let streamed = self.streamedPayload {
                guard bytes.readableBytes > 0 else { break }
                let piece = bytes.readSlice(length: min(streamed.remainingLength, bytes.readableBytes))!
                self.streamedPayload = streamed.advanced(by: piece.readableBytes)
                self.forward(piece, maskWord: streamed.maskWord, context: context)
                continue
            }
            let frame: WebSocketFrameParser.Frame?
            do {
                frame = try self.parser.parse(&bytes, streamingData: true)
            } catch {
                self.inputEnded = true
                switch error {
                case .frameTooLarge(let announced, let maximum):
                    self.closeWithError(
                        context: context, code: .messageTooLarge,
                        reason: "a frame of \(announced) bytes is over the limit of \(maximum)"
                    )
                case .controlFrameTooLong:
                    self.closeWithError(context: context, code: .protocolError, reason: "control frame longer than 125 bytes")
                case .fragmentedControlFrame:
                    self.closeWithError(context: context, code: .protocolError, reason: "fragmented control frame")
                }
                return
            }
            guard let frame else { break }
            self.received(frame, context: context)
        }
        if !self.inputEnded && bytes.readableBytes > 0 { self.partialFrame = bytes }
    }

    private func received(_ frame: WebSocketFrameParser.Frame, context: ChannelHandlerContext) {
        if !self.isClient && frame.maskWord == nil {
            self.protocolViolation(context: context, code: .protocolError, reason: "client frames must be masked")
            return
        }
        // No extension is negotiated, so every reserved bit must be clear (RFC 6455 section 5.2).
        if frame.reservedBits != 0 {
            self.protocolViolation(context: context, code: .protocolError, reason: "reserved bits set without a negotiated extension")
            return
        }
        switch frame.opcode {
        case .binary:
            guard !self.inFragmentedMessage else {
                self.protocolViolation(context: context, code: .protocolError, reason: "new message inside a fragmented one")
                return
            }
            self.inFragmentedMessage = !frame.fin
            self.forwardPayload(of: frame, context: context)
        case .continuation:
            guard self.inFragmentedMessage else {
                self.protocolViolation(context: context, code: .protocolError, reason: "continuation without a message")
                return
            }
            self.inFragmentedMessage = !frame.fin
            self.forwardPayload(of: frame, context: context)
        case .ping:
            self.writeFrame(context: context, opcode: .pong, payload: frame.unmaskedPayload, promise: nil)
            context.flush()
        case .pong:
            break
        case .connectionClose:
            self.inputEnded = true
            self.receivedClose(context: context, frame: frame)
        case .text:
            self.protocolViolation(context: context, code: .unacceptableData, reason: "culvert carries binary messages only")
        default:
            self.protocolViolation(context: context, code: .protocolError, reason: "unknown opcode")
        }
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        self.unflushedParts.append(self.unwrapOutboundIn(data))
        guard let promise else { return }
        if let pending = self.unflushedPromise {
            pending.futureResult.cascade(to: promise)
        } else {
            self.unflushedPromise = promise
        }
    }

    public func flush(context: ChannelHandlerContext) {
        self.writeUnflushedMessage(context: context)
        context.flush()
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        self.unflushedParts.removeAll()
        self.unflushedPromise?.fail(ChannelError.ioOnClosedChannel)
        self.unflushedPromise = nil
    }

    /// What was written since the last flush, as one binary frame: a server sends the header and then the parts as
    /// they are (one `writev`); a client masks them into one buffer, part by part.
    private func writeUnflushedMessage(context: ChannelHandlerContext) {
        guard !self.unflushedParts.isEmpty else { return }
        let promise = self.unflushedPromise
        self.unflushedPromise = nil
        if self.unflushedParts.count == 1 {
            self.writeFrame(context: context, opcode: .binary, payload: self.unflushedParts[0], promise: promise)
            self.unflushedParts.removeAll(keepingCapacity: true)
            return
        }
        let length = self.unflushedParts.reduce(0) { $0 + $1.readableBytes }
        let maskWord = self.isClient ? self.maskKeys.next() : nil
        self.outboundFrame.clear(minimumCapacity: WebSocketFrameWriter.maximumHeaderLength + (maskWord == nil ? 0 : length))
        WebSocketFrameWriter.writeHeader(opcode: .binary, payloadLength: length, maskWord: maskWord, into: &self.outboundFrame)
        if let maskWord {
            var offset = 0
            for part in self.unflushedParts {
                let key = WebSocketFrameWriter.maskWord(maskWord, fromPayloadOffset: offset)
                WebSocketFrameWriter.appendMasked(part, maskWord: key, to: &self.outboundFrame)
                offset += part.readableBytes
            }
            context.write(self.wrapOutboundOut(self.outboundFrame), promise: promise)
        } else {
            context.write(self.wrapOutboundOut(self.outboundFrame), promise: nil)
            for (index, part) in self.unflushedParts.enumerated() {
                context.write(self.wrapOutboundOut(part), promise: index == self.unflushedParts.count - 1 ? promise : nil)
            }
        }
        self.unflushedParts.removeAll(keepingCapacity: true)
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

    /// Passes up what has arrived of a data frame's payload and notes what is still to come.
    private func forwardPayload(of frame: WebSocketFrameParser.Frame, context: ChannelHandlerContext) {
        if frame.remainingPayloadLength > 0 {
            self.streamedPayload = StreamedPayload(
                remainingLength: frame.remainingPayloadLength,
                maskWord: frame.maskWord.map { WebSocketFrameWriter.maskWord($0, fromPayloadOffset: frame.payload.readableBytes) }
            )
        }
        self.forward(frame.payload, maskWord: frame.maskWord, context: context)
    }

    /// Passes `payload` up, unmasked with `maskWord` (already rotated to where the piece starts in its frame) into
    /// ``unmaskedData`` when there is one.
    private func forward(_ payload: ByteBuffer, maskWord: UInt32?, context: ChannelHandlerContext) {
        guard payload.readableBytes > 0 else { return }
        guard let maskWord else {
            context.fireChannelRead(self.wrapInboundOut(payload))
            return
        }
        self.unmaskedData.clear(minimumCapacity: payload.readableBytes)
        WebSocketFrameWriter.appendMasked(payload, maskWord: maskWord, to: &self.unmaskedData)
        context.fireChannelRead(self.wrapInboundOut(self.unmaskedData))
    }

    private func receivedClose(context: ChannelHandlerContext, frame: WebSocketFrameParser.Frame) {
        if self.closeSent {
            context.close(promise: nil)
            return
        }
        self.closeSent = true
        self.writeFrameThenClose(context: context, opcode: .connectionClose, payload: frame.unmaskedPayload)
    }

    /// The peer broke the protocol: nothing more is read, and the connection ends with `code`.
    private func protocolViolation(context: ChannelHandlerContext, code: WebSocketErrorCode, reason: String) {
        self.inputEnded = true
        self.closeWithError(context: context, code: code, reason: reason)
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

    /// Writes one whole frame; clients mask it with a fresh key. The header buffer is the one the last frame used
    /// when the socket has sent it (`clear(minimumCapacity:)` allocates only while it is still queued).
    private func writeFrame(
        context: ChannelHandlerContext,
        opcode: WebSocketOpcode,
        payload: ByteBuffer,
        promise: EventLoopPromise<Void>?
    ) {
        // A control frame goes after the data written before it.
        if opcode != .binary { self.writeUnflushedMessage(context: context) }
        let maskWord = self.isClient ? self.maskKeys.next() : nil
        let masked = maskWord == nil ? 0 : payload.readableBytes
        self.outboundFrame.clear(minimumCapacity: WebSocketFrameWriter.maximumHeaderLength + masked)
        WebSocketFrameWriter.write(opcode: opcode, payload: payload, maskWord: maskWord, into: &self.outboundFrame)
        if maskWord == nil {
            context.write(self.wrapOutboundOut(self.outboundFrame), promise: nil)
            context.write(self.wrapOutboundOut(payload), promise: promise)
        } else {
            context.write(self.wrapOutboundOut(self.outboundFrame), promise: promise)
        }
    }
}

/// How much of a data frame's payload is still to arrive, and the mask key rotated to where it resumes.
private struct StreamedPayload {
    var remainingLength: Int
    var maskWord: UInt32?

    /// The rest after `count` more bytes, or nil when they finish the payload.
    func advanced(by count: Int) -> StreamedPayload? {
        guard count < self.remainingLength else { return nil }
        return StreamedPayload(
            remainingLength: self.remainingLength - count,
            maskWord: self.maskWord.map { WebSocketFrameWriter.maskWord($0, fromPayloadOffset: count) }
        )
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

    /// The next key, as its four bytes lie in memory (see ``WebSocketFrameWriter/appendMasked(_:maskWord:to:)``).
    mutating func next() -> UInt32 {
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
        // Loaded from the bytes, not built with `WebSocketMaskingKey(_:)`: that generic initialiser, unspecialised
        // across modules, cost four heap allocations per key.
        return self.pool.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: self.index, as: UInt32.self) }
    }
}
