import CulvertCore
import NIOCore
import Testing

/// A batch is sealed where it lies, in the pieces a gathered write would send (headers, then each large payload as it
/// came): the result is byte for byte what sealing the joined batch gives, and a message too long for one SEALED frame
/// is still cut between frames.
@Suite struct SessionCipherPiecesTests {
    let keys = SealingKeys(clientToServer: Array(repeating: 7, count: 32), serverToClient: Array(repeating: 9, count: 32))

    /// Frames of several kinds and lengths (odd ones, so that pieces end inside AES blocks), encoded.
    func batch() -> ByteBuffer {
        let encoder = FrameEncoder()
        var batch = ByteBuffer()
        for (index, length) in [1, 3000, 17, 4096, 0, 2049, 5].enumerated() {
            let payload = ByteBuffer(bytes: (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ index) })
            encoder.encode(.data(streamID: UInt32(index + 1), flags: [], payload: payload), into: &batch)
        }
        encoder.encode(.window(streamID: 3, increment: 65536), into: &batch)
        return batch
    }

    /// `buffer` cut at `offsets` (ascending), as slices: the pieces of one message.
    func cut(_ buffer: ByteBuffer, at offsets: [Int]) -> [ByteBuffer] {
        var pieces: [ByteBuffer] = []
        var start = 0
        for offset in offsets + [buffer.readableBytes] {
            pieces.append(buffer.getSlice(at: buffer.readerIndex + start, length: offset - start)!)
            start = offset
        }
        return pieces
    }

    @Test(arguments: [[], [1], [10, 11, 3000], [15, 16, 17, 32, 33], [0, 0, 5000, 5000]])
    func piecesSealIntoTheFrameTheirJoinedBytesWouldGive(offsets: [Int]) throws {
        let batch = self.batch()
        var joined = SessionCipher(keys: self.keys, isClient: true)
        var expected = ByteBuffer()
        joined.seal(batch, into: &expected)
        var inPieces = SessionCipher(keys: self.keys, isClient: true)
        var sealed = ByteBuffer()
        inPieces.seal(pieces: self.cut(batch, at: offsets), into: &sealed)
        #expect(sealed == expected)
        var server = SessionCipher(keys: self.keys, isClient: false)
        var decoder = FrameDecoder(maximumPayloadLength: 1 << 20)
        guard case .sealed(let payload)? = try decoder.decode(buffer: &sealed) else { throw Failure("not a SEALED frame") }
        #expect(try server.open(payload) == batch)
    }

    @Test func aMessageOfPiecesLongerThanOneSealedFrameIsCutBetweenFramesAndOpensWhole() throws {
        let encoder = FrameEncoder()
        var message: [ByteBuffer] = []
        var joined = ByteBuffer()
        for index in 0..<12 {
            let payload = ByteBuffer(repeating: UInt8(index), count: 40_000 + index)
            var header = ByteBuffer()
            encoder.encodeDataHeader(streamID: 1, flags: [], payloadLength: payload.readableBytes, into: &header)
            message += [header, payload]
            joined.writeImmutableBuffer(header)
            joined.writeImmutableBuffer(payload)
        }
        #expect(joined.readableBytes > SessionCipher.maximumPlaintextLength)
        var client = SessionCipher(keys: self.keys, isClient: true)
        var wire = client.sealMessage(message)
        var server = SessionCipher(keys: self.keys, isClient: false)
        var decoder = FrameDecoder(maximumPayloadLength: 2 * SessionCipher.maximumPlaintextLength)
        var opened = ByteBuffer()
        while let frame = try decoder.decode(buffer: &wire) {
            guard case .sealed(let payload) = frame else { throw Failure("not a SEALED frame") }
            var plaintext = try server.open(payload)
            #expect(plaintext.readableBytes <= SessionCipher.maximumPlaintextLength)
            opened.writeBuffer(&plaintext)
        }
        #expect(server.openedCount == 2)
        #expect(opened == joined)
    }

    /// The next message is sealed into the storage of the last once the transport has let go of it, and never into
    /// one still held.
    @Test func aSealedMessageLetGoOfTakesTheNextAndOneStillHeldStaysIntact() throws {
        var client = SessionCipher(keys: self.keys, isClient: true)
        func address(_ buffer: ByteBuffer) -> UInt { buffer.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) } }
        let firstAddress = address(client.sealMessage([ByteBuffer(repeating: 1, count: 4000)]))
        let second = client.sealMessage([ByteBuffer(string: "a short frame")])
        #expect(address(second) == firstAddress)
        let secondBytes = Array(second.readableBytesView)
        let third = client.sealMessage([ByteBuffer(string: "another frame")])
        #expect(address(third) != address(second))
        #expect(Array(second.readableBytesView) == secondBytes)
    }

    @Test func anEmptyMessageStaysEmptyAndUsesNoNonce() {
        var client = SessionCipher(keys: self.keys, isClient: true)
        #expect(client.sealMessage([ByteBuffer(), ByteBuffer()]).readableBytes == 0)
        #expect(client.sealedCount == 0)
    }
}
