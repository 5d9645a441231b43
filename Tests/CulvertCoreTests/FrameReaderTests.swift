import CulvertCore
import NIOCore
import Testing

/// The session's frame reader: frames split and joined anywhere across transport messages come out whole and in
/// order, and what it keeps between messages is one frame at most.
@Suite struct FrameReaderTests {
    static let frames: [Frame] = [
        .data(streamID: 1, flags: [], payload: ByteBuffer(bytes: (0..<3000).map { UInt8(truncatingIfNeeded: $0) })),
        .ack(received: 7),
        .data(streamID: 3, flags: [], payload: ByteBuffer(bytes: [1])),
        .ping(42),
        .data(streamID: 1, flags: [], payload: ByteBuffer(repeating: 9, count: 20_000)),
        .window(streamID: 3, increment: 65536),
    ]

    static var stream: ByteBuffer {
        var bytes = ByteBuffer()
        for frame in Self.frames { FrameEncoder().encode(frame, into: &bytes) }
        return bytes
    }

    /// Every message length from one byte up to more than the whole stream gives the same frames.
    @Test(arguments: [1, 2, 9, 10, 11, 777, 4096, 20_011, 100_000])
    func framesCutIntoMessagesOfAnyLengthComeOutWhole(messageLength: Int) throws {
        let reader = FrameReader(maximumPayloadLength: 32 * 1024)
        var stream = Self.stream
        var read: [Frame] = []
        while stream.readableBytes > 0 {
            try reader.process(stream.readSlice(length: min(messageLength, stream.readableBytes))!) { read.append($0) }
            #expect(reader.bufferedBytes <= 20_010, "more than one frame held after a message")
        }
        #expect(read == Self.frames)
        #expect(reader.bufferedBytes == 0)
    }

    /// A header announcing more than the maximum payload fails as soon as the header is in, also when the header
    /// itself arrives in pieces; an unknown frame type fails too.
    @Test func oversizedOrUnknownFramesFailAtTheirHeader() throws {
        var oversized = ByteBuffer()
        FrameEncoder().encode(.data(streamID: 1, flags: [], payload: ByteBuffer(repeating: 0, count: 5000)), into: &oversized)
        let header = oversized.readSlice(length: FrameEncoder.headerLength)!
        let reader = FrameReader(maximumPayloadLength: 4096)
        try reader.process(header.getSlice(at: header.readerIndex, length: 4)!) { _ in Issue.record("no frame expected") }
        #expect(throws: FrameDecodingError.self) {
            try reader.process(header.getSlice(at: header.readerIndex + 4, length: 6)!) { _ in }
        }
        let unknown = FrameReader(maximumPayloadLength: 4096)
        #expect(throws: FrameDecodingError.self) {
            try unknown.process(ByteBuffer(bytes: [0xEE, 0, 0, 0, 0, 0, 0, 0, 0, 0])) { _ in }
        }
    }
}

extension FrameReaderTests {
    /// Random cuts of a long stream of frames of random sizes read the same frames as NIO's byte-to-message
    /// processor around the same decoder.
    @Test func randomCutsReadWhatNIOsProcessorReads() throws {
        var generator = SystemRandomNumberGenerator()
        var stream = ByteBuffer()
        var frames: [Frame] = []
        for index in 0..<400 {
            let length = [0, 1, 9, 100, 1000, 16_384, 32_768][Int.random(in: 0..<7, using: &generator)]
            let frame: Frame = index % 5 == 4
                ? .ack(received: UInt64(index))
                : .data(streamID: 1, flags: [], payload: ByteBuffer(repeating: UInt8(truncatingIfNeeded: index), count: length))
            frames.append(frame)
            FrameEncoder().encode(frame, into: &stream)
        }
        for _ in 0..<20 {
            let reader = FrameReader(maximumPayloadLength: 33 * 1024)
            var rest = stream
            var read: [Frame] = []
            while rest.readableBytes > 0 {
                let length = min(rest.readableBytes, Int.random(in: 1...70_000, using: &generator))
                try reader.process(rest.readSlice(length: length)!) { read.append($0) }
            }
            #expect(read == frames)
        }
    }
}

extension FrameReaderTests {
    /// A message handed in while a frame is being handled (NIO reads from a socket whose write just failed, inside
    /// the write) is read after the rest of the message under way, in order: a frame that straddles the two comes
    /// out whole.
    @Test func aMessageHandedInWhileAFrameIsHandledIsReadInOrder() throws {
        let reader = FrameReader(maximumPayloadLength: 32 * 1024)
        var stream = Self.stream
        let first = stream.readSlice(length: 2000)!  // ends inside the first frame's payload
        let second = stream.readSlice(length: 3015)!  // the first frame's end, the ACK, part of the third frame
        let third = stream
        var read: [Frame] = []
        var handedIn = false
        try reader.process(first) { read.append($0) }
        try reader.process(second) { frame in
            read.append(frame)
            if !handedIn {
                handedIn = true
                try reader.process(third) { _ in Issue.record("the inner call must only queue its message") }
            }
        }
        #expect(read == Self.frames)
    }
}
