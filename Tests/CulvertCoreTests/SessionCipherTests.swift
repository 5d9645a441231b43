import CulvertCore
import NIOCore
import Testing

/// What a hop on the path can do to sealed frames, and what comes of it: each alteration fails to open, and the
/// frames that came before it opened intact.
@Suite struct SessionCipherTests {
    let keys = SealingKeys(clientToServer: Array(repeating: 1, count: 32), serverToClient: Array(repeating: 2, count: 32))

    /// Client and server ciphers of one attachment.
    func pair() -> (client: SessionCipher, server: SessionCipher) {
        (SessionCipher(keys: self.keys, isClient: true), SessionCipher(keys: self.keys, isClient: false))
    }

    /// SEALED frames made by `cipher` for each plaintext, as their payloads (what the decoder hands the session).
    func seal(_ plaintexts: [String], with cipher: inout SessionCipher) throws -> [ByteBuffer] {
        try plaintexts.map { text in
            var wire = ByteBuffer()
            cipher.seal(ByteBuffer(string: text), into: &wire)
            var decoder = FrameDecoder(maximumPayloadLength: 8192)
            guard case .sealed(let payload)? = try decoder.decode(buffer: &wire) else { throw Failure("not a SEALED frame") }
            #expect(wire.readableBytes == 0)
            return payload
        }
    }

    @Test func framesSealedInOrderOpenInOrderAndHideTheirContent() throws {
        var (client, server) = self.pair()
        let sealed = try self.seal(["first frame", "second frame"], with: &client)
        #expect(!String(buffer: sealed[0]).contains("first"))
        #expect(try String(buffer: server.open(sealed[0])) == "first frame")
        #expect(try String(buffer: server.open(sealed[1])) == "second frame")
        #expect(server.openedCount == 2)
    }

    @Test func aFlippedBitAnywhereFailsToOpen() throws {
        var (client, _) = self.pair()
        let sealed = try self.seal(["payload that a proxy would like to change"], with: &client)[0]
        for offset in [0, 7, sealed.readableBytes - 17, sealed.readableBytes - 1] {
            var server = self.pair().server
            var altered = sealed
            altered.setInteger(altered.getInteger(at: offset, as: UInt8.self)! ^ 0x01, at: offset)
            #expect(throws: SessionCipherError.authenticationFailed(frame: 0)) { _ = try server.open(altered) }
        }
    }

    @Test func aDroppedFrameFailsTheNextOne() throws {
        var (client, server) = self.pair()
        let sealed = try self.seal(["one", "two", "three"], with: &client)
        #expect(try String(buffer: server.open(sealed[0])) == "one")
        #expect(throws: SessionCipherError.authenticationFailed(frame: 1)) { _ = try server.open(sealed[2]) }
    }

    @Test func aRepeatedFrameFailsToOpen() throws {
        var (client, server) = self.pair()
        let sealed = try self.seal(["once"], with: &client)
        _ = try server.open(sealed[0])
        #expect(throws: SessionCipherError.authenticationFailed(frame: 1)) { _ = try server.open(sealed[0]) }
    }

    @Test func reorderedFramesFailToOpen() throws {
        var (client, server) = self.pair()
        let sealed = try self.seal(["a", "b"], with: &client)
        #expect(throws: SessionCipherError.authenticationFailed(frame: 0)) { _ = try server.open(sealed[1]) }
    }

    @Test func aFrameMadeUpOrReflectedFailsToOpen() throws {
        var (client, server) = self.pair()
        // Made up: the right shape, no key.
        #expect(throws: SessionCipherError.authenticationFailed(frame: 0)) {
            _ = try server.open(ByteBuffer(bytes: Array(repeating: 0xAB, count: 40)))
        }
        // Reflected: the client's own frame sent back to it.
        let own = try self.seal(["mine"], with: &client)[0]
        #expect(throws: SessionCipherError.authenticationFailed(frame: 0)) { _ = try client.open(own) }
        #expect(throws: SessionCipherError.tooShort) { _ = try server.open(ByteBuffer(bytes: [1, 2, 3])) }
    }

    /// A batch longer than a SEALED frame holds (a resumption's replay) is cut between frames, each piece within the
    /// limit unless one frame alone is longer; opened in order they give back the batch byte for byte.
    @Test func aLongBatchIsSealedInPiecesCutBetweenFrames() throws {
        var (client, server) = self.pair()
        let encoder = FrameEncoder()
        var batch = ByteBuffer()
        for index in 0..<40 {
            let length = index == 20 ? SessionCipher.maximumPlaintextLength + 5000 : 20_000 + index
            encoder.encode(.data(streamID: 1, flags: [], payload: ByteBuffer(repeating: UInt8(index), count: length)), into: &batch)
        }
        var wire = ByteBuffer()
        client.sealFrames(batch, into: &wire)
        var decoder = FrameDecoder(maximumPayloadLength: 2 * SessionCipher.maximumPlaintextLength)
        var opened = ByteBuffer()
        var pieces = 0
        while let frame = try decoder.decode(buffer: &wire) {
            guard case .sealed(let payload) = frame else { throw Failure("not a SEALED frame") }
            var plaintext = try server.open(payload)
            pieces += 1
            let isTheLongFrame = plaintext.readableBytes > SessionCipher.maximumPlaintextLength
            var inner = FrameDecoder(maximumPayloadLength: 2 * SessionCipher.maximumPlaintextLength)
            var frames = 0
            var start = plaintext
            while try inner.decode(buffer: &plaintext) != nil { frames += 1 }
            #expect(plaintext.readableBytes == 0, "a piece ends inside a frame")
            #expect(!isTheLongFrame || frames == 1, "the long frame shares its piece")
            opened.writeBuffer(&start)
        }
        #expect(pieces > 3)
        #expect(opened == batch)
    }

    @Test func aCutOrLengthenedFrameFailsToOpen() throws {
        var (client, _) = self.pair()
        let sealed = try self.seal(["sixteen bytes or more of payload"], with: &client)[0]
        var server = self.pair().server
        #expect(throws: SessionCipherError.self) { _ = try server.open(sealed.getSlice(at: sealed.readerIndex, length: sealed.readableBytes - 1)!) }
        var longer = sealed
        longer.writeInteger(UInt8(0))
        #expect(throws: SessionCipherError.self) { _ = try server.open(longer) }
    }

    /// Opening writes into the storage of the payload opened before once nothing holds it, so that frame after frame
    /// opens without allocating; a payload still held is never written over.
    @Test func anOpenedPayloadLetGoOfTakesTheNextAndOneStillHeldStaysIntact() throws {
        var (client, server) = self.pair()
        let long = String(repeating: "x", count: 4000)
        let sealed = try self.seal([long, "second frame", "third frame"], with: &client)
        #expect(try server.open(sealed[0]).readableBytes == 4000)
        // The short payload is written into the long one's storage (a buffer of its own would be far smaller).
        let second = try server.open(sealed[1])
        #expect(second.capacity >= 4000)
        func address(_ buffer: ByteBuffer) -> UInt { buffer.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) } }
        let third = try server.open(sealed[2])
        #expect(address(third) != address(second))
        #expect(String(buffer: second) == "second frame")
        #expect(String(buffer: third) == "third frame")
    }

    /// An empty batch still seals into a frame that opens (to nothing) and counts.
    @Test func anEmptyPlaintextSealsAndOpens() throws {
        var (client, server) = self.pair()
        let sealed = try self.seal([""], with: &client)
        #expect(sealed[0].readableBytes == SessionCipher.tagLength)
        #expect(try server.open(sealed[0]).readableBytes == 0)
        #expect(server.openedCount == 1)
    }
}
