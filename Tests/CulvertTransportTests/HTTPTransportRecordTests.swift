import NIOCore
import NIOTestUtils
import Testing

@testable import CulvertTransport

struct HTTPTransportRecordTests {
    /// Records of every type decode from every fragmentation of their encoding.
    @Test func recordsDecodeFromEveryFragmentation() throws {
        let records: [HTTPTransportRecord] = [
            .acknowledge(0),
            .data(offset: 0, payload: ByteBuffer(string: "hello")),
            .data(offset: 5, payload: ByteBuffer()),
            .acknowledge(0x0102_0304_0506_0708),
            .data(offset: 1 << 40, payload: ByteBuffer(repeating: 7, count: 300)),
            .close,
        ]
        let pairs = records.map { ($0.encoded(), [$0]) }
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs) {
            HTTPTransportRecordDecoder(maximumPayloadLength: 1024)
        }
    }

    /// The wire layout is the one docs/PROTOCOL.md gives: type byte, big-endian offset, length, payload.
    @Test func dataRecordLayoutIsAsDocumented() {
        let encoded = HTTPTransportRecord.data(offset: 258, payload: ByteBuffer(bytes: [0xAA, 0xBB])).encoded()
        #expect(Array(encoded.readableBytesView) == [0x44, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 2, 0xAA, 0xBB])
        #expect(Array(HTTPTransportRecord.acknowledge(1).encoded().readableBytesView) == [0x41, 0, 0, 0, 0, 0, 0, 0, 1])
        #expect(Array(HTTPTransportRecord.close.encoded().readableBytesView) == [0x43])
    }

    /// An unknown type, an oversized record and a body ending inside a record are errors, not hangs.
    @Test func malformedBodiesAreErrors() throws {
        var decoder = HTTPTransportRecordDecoder(maximumPayloadLength: 16)
        var unknown = ByteBuffer(bytes: [0x5A, 1, 2])
        #expect(throws: HTTPTransportRecordDecoder.DecodingError.unknownRecordType(0x5A)) { try decoder.decode(buffer: &unknown) }
        var oversized = HTTPTransportRecord.data(offset: 0, payload: ByteBuffer(repeating: 0, count: 17)).encoded()
        #expect(throws: HTTPTransportRecordDecoder.DecodingError.recordTooLarge(17)) { try decoder.decode(buffer: &oversized) }
        var truncated = ByteBuffer(bytes: [0x41, 0, 0])
        #expect(throws: HTTPTransportRecordDecoder.DecodingError.truncated) {
            try decoder.decodeLast(buffer: &truncated, seenEOF: true)
        }
    }
}
