import CulvertCore
import NIOCore
import Testing

/// After the handshake only SEALED frames may come, each holding whole frames and no SEALED one: anything else is
/// a violation with its own reason, and nothing of it is read.
@Suite struct SealedFrameReaderTests {
    let keys = SealingKeys(clientToServer: Array(repeating: 3, count: 32), serverToClient: Array(repeating: 4, count: 32))

    /// The SEALED frame the client makes of `plaintext`, as the transport's decoder hands it on.
    func sealed(_ plaintext: ByteBuffer, by client: inout SessionCipher) throws -> Frame {
        var wire = ByteBuffer()
        client.seal(plaintext, into: &wire)
        var decoder = FrameDecoder(maximumPayloadLength: 1 << 16)
        guard let frame = try decoder.decode(buffer: &wire) else { throw Failure("no frame") }
        return frame
    }

    func encoded(_ frames: [Frame]) -> ByteBuffer {
        var buffer = ByteBuffer()
        for frame in frames { FrameEncoder().encode(frame, into: &buffer) }
        return buffer
    }

    func ciphers() -> (client: SessionCipher, server: SessionCipher) {
        (SessionCipher(keys: self.keys, isClient: true), SessionCipher(keys: self.keys, isClient: false))
    }

    @Test func theFramesASealedFrameHoldsComeOutInOrder() throws {
        var (client, server) = self.ciphers()
        let frames: [Frame] = [.ping(1), .data(streamID: 5, flags: [], payload: ByteBuffer(string: "inside")), .ack(received: 2)]
        var reader = SealedFrameReader(maximumPayloadLength: 1 << 16)
        try reader.open(try self.sealed(self.encoded(frames), by: &client), with: &server)
        var read: [Frame] = []
        while let frame = try reader.next() { read.append(frame) }
        #expect(read == frames)
    }

    @Test func anUnsealedFrameIsAViolation() throws {
        var server = self.ciphers().server
        var reader = SealedFrameReader(maximumPayloadLength: 1 << 16)
        #expect(throws: SealingViolation.unsealed(.ping)) { try reader.open(.ping(1), with: &server) }
    }

    @Test func aFrameThatDoesNotOpenIsAViolation() throws {
        var (client, server) = self.ciphers()
        _ = try self.sealed(self.encoded([.ping(1)]), by: &client)
        let second = try self.sealed(self.encoded([.ping(2)]), by: &client)
        var reader = SealedFrameReader(maximumPayloadLength: 1 << 16)
        #expect(throws: SealingViolation.notOpened(.authenticationFailed(frame: 0))) { try reader.open(second, with: &server) }
        #expect(try reader.next() == nil)
    }

    @Test func aSealedFrameInsideAnotherIsAViolation() throws {
        var (client, server) = self.ciphers()
        var inner = ByteBuffer()
        var other = SessionCipher(keys: self.keys, isClient: true)
        other.seal(self.encoded([.ping(1)]), into: &inner)
        var reader = SealedFrameReader(maximumPayloadLength: 1 << 16)
        try reader.open(try self.sealed(inner, by: &client), with: &server)
        #expect(throws: SealingViolation.nested) { _ = try reader.next() }
    }

    @Test func aSealedFrameEndingInsideAFrameIsAViolationAfterTheWholeOnes() throws {
        var (client, server) = self.ciphers()
        var plaintext = self.encoded([.ping(1), .ping(2)])
        plaintext.moveWriterIndex(to: plaintext.writerIndex - 3)
        var reader = SealedFrameReader(maximumPayloadLength: 1 << 16)
        try reader.open(try self.sealed(plaintext, by: &client), with: &server)
        #expect(try reader.next() == .ping(1))
        #expect(throws: SealingViolation.endsInsideFrame) { _ = try reader.next() }
    }

    @Test func whatWasNotReadOfOneFrameIsDroppedWhenTheNextOpens() throws {
        var (client, server) = self.ciphers()
        var reader = SealedFrameReader(maximumPayloadLength: 1 << 16)
        try reader.open(try self.sealed(self.encoded([.ping(1), .ping(2)]), by: &client), with: &server)
        #expect(try reader.next() == .ping(1))
        try reader.open(try self.sealed(self.encoded([.ping(3)]), by: &client), with: &server)
        #expect(try reader.next() == .ping(3))
        #expect(try reader.next() == nil)
    }
}
