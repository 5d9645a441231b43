public import NIOCore

/// Reads frames from a transport's messages, which may split and join frames anywhere.
///
/// Written instead of using `NIOSingleStepByteToMessageProcessor`, which appends every message to the unread rest of
/// the one before and compacts that buffer as it goes: in bulk transfer, where DATA frames straddle every message,
/// that copied each byte once or twice (8 % of a CONNECT server's CPU, `perf record -e cpu-clock`). Here frames that
/// lie whole in a message are sliced out of it, and only a frame that straddles messages is copied, once, into a
/// buffer of its own size. What it keeps between messages is never a slice of one, so the socket's read buffer is
/// free for reuse as soon as the frames in it are.
///
/// A class, as NIO's processor is: its owner may replace it from inside `body` (a session that loses its transport
/// starts a new reader), and the call under way must be able to finish on the old one.
public final class FrameReader {
    private var decoder: FrameDecoder
    /// The start of a frame that continues in the next message (a buffer of the frame's size once its header is in).
    private var partialFrame: ByteBuffer?
    /// A call to ``process(_:_:)`` is under way.
    private var processing = false
    /// Messages handed in by calls made while one was under way, read by that call in order.
    private var queuedMessages = CircularBuffer<ByteBuffer>()

    public init(maximumPayloadLength: Int) {
        self.decoder = FrameDecoder(maximumPayloadLength: maximumPayloadLength)
    }

    /// Bytes held for a frame that has not arrived whole.
    public var bufferedBytes: Int { self.partialFrame?.readableBytes ?? 0 }

    /// Reads every frame that `message` completes, in order, and passes each to `body`. A malformed frame throws
    /// ``FrameDecodingError``; the stream cannot be read on after it.
    ///
    /// A call made from inside `body` (NIO reads what is left on a socket when a write to it fails, so a session
    /// that sends while it handles a frame can be handed the next message then) only queues its message: the call
    /// under way reads it, in order, when it has read the one before.
    public func process(_ message: ByteBuffer, _ body: (Frame) throws -> Void) throws {
        guard !self.processing else {
            self.queuedMessages.append(message)
            return
        }
        self.processing = true
        defer { self.processing = false }
        try self.read(message, body)
        while let next = self.queuedMessages.popFirst() {
            try self.read(next, body)
        }
    }

    private func read(_ message: ByteBuffer, _ body: (Frame) throws -> Void) throws {
        var message = message
        if var partial = self.partialFrame {
            self.partialFrame = nil
            if partial.readableBytes < FrameEncoder.headerLength {
                let missing = min(FrameEncoder.headerLength - partial.readableBytes, message.readableBytes)
                partial.writeImmutableBuffer(message.readSlice(length: missing)!)
            }
            guard let length = try self.decoder.frameLength(in: partial) else {
                self.partialFrame = partial
                return
            }
            partial.reserveCapacity(length)
            partial.writeImmutableBuffer(message.readSlice(length: min(length - partial.readableBytes, message.readableBytes))!)
            guard partial.readableBytes == length else {
                self.partialFrame = partial
                return
            }
            try body(try self.decoder.decode(buffer: &partial)!)
        }
        while let frame = try self.decoder.decode(buffer: &message) {
            try body(frame)
        }
        if message.readableBytes > 0 {
            let length = try self.decoder.frameLength(in: message) ?? FrameEncoder.headerLength
            var partial = ByteBufferAllocator().buffer(capacity: length)
            partial.writeImmutableBuffer(message)
            self.partialFrame = partial
        }
    }
}
