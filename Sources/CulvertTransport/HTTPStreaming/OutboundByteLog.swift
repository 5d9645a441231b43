import NIOCore

/// The bytes one side of an HTTP transport has produced and the peer has not yet acknowledged, by offset in the
/// carried byte stream, so that a request lost on the way can be sent again from the peer's acknowledgement.
struct OutboundByteLog {
    private var chunks = CircularBuffer<ByteBuffer>()
    /// Offset of the first retained byte: everything before it was acknowledged.
    private(set) var acknowledged: UInt64 = 0
    /// Offset just past the last byte produced.
    private(set) var produced: UInt64 = 0

    var unacknowledgedBytes: Int { Int(self.produced - self.acknowledged) }

    /// Appends `bytes` and returns the offset of its first byte.
    @discardableResult
    mutating func append(_ bytes: ByteBuffer) -> UInt64 {
        let offset = self.produced
        guard bytes.readableBytes > 0 else { return offset }
        self.chunks.append(bytes)
        self.produced += UInt64(bytes.readableBytes)
        return offset
    }

    enum AcknowledgeResult: Equatable {
        case advanced
        case unchanged
        /// The peer claims bytes that were never produced: a protocol violation.
        case beyondProduced
    }

    /// Frees everything before `offset`.
    mutating func acknowledge(_ offset: UInt64) -> AcknowledgeResult {
        guard offset <= self.produced else { return .beyondProduced }
        guard offset > self.acknowledged else { return .unchanged }
        var toDrop = Int(offset - self.acknowledged)
        while toDrop > 0 {
            let first = self.chunks.first!.readableBytes
            if first <= toDrop {
                self.chunks.removeFirst()
                toDrop -= first
            } else {
                self.chunks[self.chunks.startIndex].moveReaderIndex(forwardBy: toDrop)
                toDrop = 0
            }
        }
        self.acknowledged = offset
        return .advanced
    }

    /// The retained bytes from `offset` on, as (offset, slice) pieces totalling at most `limit` bytes.
    func pieces(from offset: UInt64, limit: Int) -> [(offset: UInt64, bytes: ByteBuffer)] {
        precondition(offset >= self.acknowledged && offset <= self.produced)
        var result: [(offset: UInt64, bytes: ByteBuffer)] = []
        var position = self.acknowledged
        var budget = limit
        for chunk in self.chunks {
            guard budget > 0 else { break }
            let end = position + UInt64(chunk.readableBytes)
            defer { position = end }
            guard end > offset else { continue }
            let skip = Int(offset > position ? offset - position : 0)
            let length = min(chunk.readableBytes - skip, budget)
            result.append((position + UInt64(skip), chunk.getSlice(at: chunk.readerIndex + skip, length: length)!))
            budget -= length
        }
        return result
    }
}
