import CulvertCore
import NIOCore
import Testing

/// A batch sends its frames as one message, copying no large payload; records its reliable frames for replay as
/// they were sent; and reuses its buffers once nothing holds them.
@Suite struct OutboundBatchTests {
    let large = ByteBuffer(repeating: 0xab, count: OutboundBatch.gatheredPayloadMinimum + 100)

    /// The frames that `parts`, joined, hold.
    func frames(in parts: [ByteBuffer]) throws -> [Frame] {
        var joined = ByteBuffer()
        for part in parts { joined.writeImmutableBuffer(part) }
        var decoder = FrameDecoder(maximumPayloadLength: 1 << 20)
        var frames: [Frame] = []
        while let frame = try decoder.decode(buffer: &joined) { frames.append(frame) }
        #expect(joined.readableBytes == 0)
        return frames
    }

    /// Bytes of `frame` encoded.
    func encodedSize(_ frame: Frame) -> Int {
        var buffer = ByteBuffer()
        FrameEncoder().encode(frame, into: &buffer)
        return buffer.readableBytes
    }

    func address(_ buffer: ByteBuffer) -> UInt { buffer.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) } }

    @Test func smallFramesShareOneBufferAndALargePayloadIsSentAsItCameAfterItsHeader() throws {
        var batch = OutboundBatch()
        let queued: [Frame] = [
            .data(streamID: 1, flags: [], payload: ByteBuffer(string: "small")),
            .window(streamID: 3, increment: 4096),
            .data(streamID: 5, flags: [], payload: self.large),
            .ping(7),
        ]
        for frame in queued { batch.append(frame) }
        #expect(batch.byteCount == queued.reduce(0) { $0 + self.encodedSize($1) })
        var sent: [ByteBuffer] = []
        sent = batch.takeMessage()
        #expect(sent.count == 3)
        #expect(self.address(sent[1]) == self.address(self.large), "the large payload was copied")
        #expect(try self.frames(in: sent) == queued)
        #expect(batch.isEmpty && batch.byteCount == 0)
    }

    @Test func aBatchWithNothingGatheredIsOneBuffer() throws {
        var batch = OutboundBatch()
        batch.append(.ping(1))
        batch.append(.data(streamID: 1, flags: [], payload: ByteBuffer(string: "x")))
        var sent: [ByteBuffer] = []
        sent = batch.takeMessage()
        #expect(sent.count == 1)
        #expect(try self.frames(in: sent) == [.ping(1), .data(streamID: 1, flags: [], payload: ByteBuffer(string: "x"))])
    }

    @Test func theReliableFramesAreRecordedForReplayInOrderAndTheOthersAreNot() throws {
        var batch = OutboundBatch()
        let reliable: [Frame] = [
            .data(streamID: 1, flags: [], payload: ByteBuffer(string: "first")),
            .data(streamID: 1, flags: [], payload: self.large),
            .window(streamID: 1, increment: 100),
        ]
        batch.append(reliable[0])
        batch.append(.ping(9))
        batch.append(reliable[1])
        batch.append(.ack(received: 3))
        batch.append(reliable[2])
        #expect(batch.hasUnrecordedReliableFrames)
        var sequencer = ReliableSequencer()
        batch.recordReliableFrames(in: &sequencer)
        #expect(!batch.hasUnrecordedReliableFrames)
        #expect(sequencer.sent == 3)
        #expect(sequencer.replayBytes == reliable.reduce(0) { $0 + self.encodedSize($1) })
        let replay = try sequencer.framesToReplay(peerReceived: 0)
        #expect(try self.frames(in: replay) == reliable)
        _ = batch.takeMessage()
    }

    @Test func aDiscardedBatchSendsNothingOfWhatItHeld() {
        var batch = OutboundBatch()
        batch.append(.data(streamID: 1, flags: [], payload: self.large))
        batch.discard()
        #expect(batch.isEmpty && batch.byteCount == 0 && !batch.hasUnrecordedReliableFrames)
        batch.append(.ping(1))
        var sent: [ByteBuffer] = []
        sent = batch.takeMessage()
        #expect(sent.map(\.readableBytes) == [self.encodedSize(.ping(1))])
    }

    /// Two buffers take turns: the one sent before last is written into again once the socket (here: the test) has
    /// let go of it, and one still held is never written over.
    @Test func theBufferSentBeforeLastTakesTheNextBatchOnceLetGoOf() throws {
        var batch = OutboundBatch()
        var addresses: [UInt] = []
        for index in 0..<3 {
            batch.append(.ping(UInt64(index)))
            addresses.append(self.address(batch.takeMessage()[0]))
        }
        #expect(addresses[2] == addresses[0])
        #expect(addresses[1] != addresses[0])
        batch.append(.ping(10))
        var held: [ByteBuffer] = []
        held = batch.takeMessage()
        batch.append(.ping(11))
        _ = batch.takeMessage()
        batch.append(.ping(12))
        _ = batch.takeMessage()
        #expect(try self.frames(in: held) == [.ping(10)])
    }
}
