import NIOCore

/// Where a receiver of an HTTP transport stands in the carried byte stream: it passes on each byte once, in
/// order, however often a retried or replaced request delivers it.
struct InboundByteCursor {
    /// Bytes received in order so far; the offset of the next new byte.
    private(set) var received: UInt64 = 0

    enum Outcome: Equatable {
        /// New bytes to pass on.
        case deliver(ByteBuffer)
        /// All of it was seen before.
        case duplicate
        /// It starts after bytes that never came: a protocol violation.
        case gap
    }

    mutating func accept(offset: UInt64, payload: ByteBuffer) -> Outcome {
        guard offset <= self.received else { return .gap }
        let end = offset + UInt64(payload.readableBytes)
        guard end > self.received else { return .duplicate }
        let skip = Int(self.received - offset)
        self.received = end
        return .deliver(payload.getSlice(at: payload.readerIndex + skip, length: payload.readableBytes - skip)!)
    }
}
