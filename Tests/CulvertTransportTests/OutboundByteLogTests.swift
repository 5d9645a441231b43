import NIOCore
import Testing

@testable import CulvertTransport

struct OutboundByteLogTests {
    private func log(_ chunks: [String]) -> OutboundByteLog {
        var log = OutboundByteLog()
        for chunk in chunks { log.append(ByteBuffer(string: chunk)) }
        return log
    }

    private func text(_ pieces: [(offset: UInt64, bytes: ByteBuffer)]) -> String {
        pieces.map { String(buffer: $0.bytes) }.joined()
    }

    /// Pieces from any offset give exactly the retained bytes from there, with their offsets, within the limit.
    @Test func piecesStartAtTheOffsetAndRespectTheLimit() {
        let log = self.log(["abc", "defg", "h"])
        #expect(log.produced == 8)
        #expect(self.text(log.pieces(from: 0, limit: .max)) == "abcdefgh")
        let fromMiddle = log.pieces(from: 4, limit: .max)
        #expect(fromMiddle.map(\.offset) == [4, 7])
        #expect(self.text(fromMiddle) == "efgh")
        #expect(self.text(log.pieces(from: 1, limit: 4)) == "bcde")
        #expect(log.pieces(from: 8, limit: .max).isEmpty)
    }

    /// Acknowledging frees bytes (also inside a chunk); a stale ack changes nothing; an ack past what was
    /// produced is reported.
    @Test func acknowledgementsFreeBytesAndCatchViolations() {
        var log = self.log(["abc", "defg"])
        #expect(log.acknowledge(5) == .advanced)
        #expect(log.unacknowledgedBytes == 2)
        #expect(self.text(log.pieces(from: 5, limit: .max)) == "fg")
        #expect(log.acknowledge(3) == .unchanged)
        #expect(log.acknowledge(8) == .beyondProduced)
        #expect(log.acknowledge(7) == .advanced)
        #expect(log.unacknowledgedBytes == 0)
        log.append(ByteBuffer(string: "xy"))
        #expect(self.text(log.pieces(from: 7, limit: .max)) == "xy")
    }
}

struct InboundByteCursorTests {
    /// Each byte is passed on once, in order: overlaps are trimmed, repeats dropped, gaps reported.
    @Test func passesEachByteOnceInOrder() {
        var cursor = InboundByteCursor()
        #expect(cursor.accept(offset: 0, payload: ByteBuffer(string: "abc")) == .deliver(ByteBuffer(string: "abc")))
        #expect(cursor.accept(offset: 0, payload: ByteBuffer(string: "abc")) == .duplicate)
        #expect(cursor.accept(offset: 1, payload: ByteBuffer(string: "bcde")) == .deliver(ByteBuffer(string: "de")))
        #expect(cursor.accept(offset: 7, payload: ByteBuffer(string: "x")) == .gap)
        #expect(cursor.received == 5)
    }
}
