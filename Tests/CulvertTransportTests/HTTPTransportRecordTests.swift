import Foundation
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

    static let golden: [String: HTTPTransportRecord] = [
        "data": .data(offset: 0, payload: ByteBuffer(string: "hello")),
        "data_offset": .data(offset: 0x0000_0102_0304_0506, payload: ByteBuffer(bytes: [0xAA, 0xBB, 0xCC])),
        "data_empty": .data(offset: 42, payload: ByteBuffer()),
        "ack": .acknowledge(0x0102_0304_0506_0708),
        "close": .close,
    ]

    /// fixtures/records.hex (written by an independent Python encoder) has every record kind; encoding gives
    /// its bytes and decoding them gives the record back.
    @Test func goldenVectorsEncodeAndDecode() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("fixtures/records.hex").path
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        #expect(Set(lines.map { String($0.split(separator: " ")[0]) }) == Set(Self.golden.keys))
        for line in lines {
            let parts = line.split(separator: " ")
            let record = try #require(Self.golden[String(parts[0])])
            let hex = String(parts[1])
            let bytes = stride(from: 0, to: hex.count, by: 2).map { offset -> UInt8 in
                let start = hex.index(hex.startIndex, offsetBy: offset)
                return UInt8(hex[start..<hex.index(start, offsetBy: 2)], radix: 16)!
            }
            #expect(Array(record.encoded().readableBytesView) == bytes, "encoding \(parts[0])")
            var buffer = ByteBuffer(bytes: bytes)
            var decoder = HTTPTransportRecordDecoder(maximumPayloadLength: 1024)
            #expect(try decoder.decode(buffer: &buffer) == record, "decoding \(parts[0])")
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
