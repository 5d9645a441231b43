@testable import CulvertTransport
import Foundation
import NIOCore
import NIOHTTP1
import Testing

/// The text body shape: the same bytes as base64 lines, decoded as they arrive in pieces of any size, and refused
/// when they are not what the encoder writes; the shape a request asks for, and whether an answer is in it.
@Suite struct HTTPBodyShapeTests {
    /// Writes of every length around the base64 group boundaries, the text cut into pieces of 1 to 11 bytes.
    @Test(arguments: 1...11)
    func textBodiesDecodeToTheBytesWrittenWhateverTheirPieces(pieceLength: Int) throws {
        var generator = SystemRandomNumberGenerator()
        let writes = (0..<40).map { length in (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) } }
        var wire = ByteBuffer()
        for write in writes {
            var line = HTTPBodyShape.text.wire(ByteBuffer(bytes: write), allocator: ByteBufferAllocator())
            // Each line is the standard base64 of its write (what Python's or Foundation's decoder reads) and "\n".
            #expect(line.getString(at: line.readerIndex, length: line.readableBytes) == Data(write).base64EncodedString() + "\n")
            wire.writeBuffer(&line)
        }
        var decoder = try #require(HTTPBodyShape.text.makeDecoder())
        var decoded: [UInt8] = []
        while wire.readableBytes > 0 {
            let piece = wire.readSlice(length: min(pieceLength, wire.readableBytes))!
            decoded += Array(try decoder.decode(piece).readableBytesView)
        }
        try decoder.finish()
        #expect(decoded == writes.flatMap { $0 })
    }

    @Test(arguments: [
        ("QUJD\n$A==\n", Base64LineDecoder.DecodingError.notBase64(UInt8(ascii: "$"))),
        ("QUJ\n", .lineEndsMidGroup),
        ("QQ==QUJD\n", .paddingInsideLine),
        ("Q===\n", .paddingInsideLine),
        ("QQ=A\n", .paddingInsideLine),
    ])
    func malformedTextBodiesAreRefused(text: String, error: Base64LineDecoder.DecodingError) {
        var decoder = Base64LineDecoder()
        #expect(throws: error) { _ = try decoder.decode(ByteBuffer(string: text)) }
    }

    @Test func aTextBodyCutInsideAGroupIsTruncated() throws {
        var decoder = Base64LineDecoder()
        _ = try decoder.decode(ByteBuffer(string: "QUJDRE"))
        #expect(throws: Base64LineDecoder.DecodingError.truncated) { try decoder.finish() }
    }

    @Test func binaryBodiesGoAsTheyAre() {
        let bytes = ByteBuffer(bytes: [0, 1, 2, 255])
        #expect(HTTPBodyShape.binary.wire(bytes, allocator: ByteBufferAllocator()) == bytes)
        #expect(HTTPBodyShape.binary.makeDecoder() == nil)
    }

    /// The body's `Content-Type` decides, else `Accept`; a request naming neither (an earlier client) gets binary.
    @Test func theShapeARequestAsksForComesFromItsContentTypeOrElseItsAccept() {
        func head(_ headers: [(String, String)]) -> HTTPRequestHead {
            HTTPRequestHead(version: .http1_1, method: .POST, uri: "/culvert/up", headers: HTTPHeaders(headers))
        }
        #expect(HTTPBodyShape.requested(by: head([])) == .binary)
        #expect(HTTPBodyShape.requested(by: head([("Accept", "text/plain; charset=utf-8")])) == .text)
        #expect(HTTPBodyShape.requested(by: head([("Content-Type", " Text/Plain ;charset=utf-8")])) == .text)
        #expect(HTTPBodyShape.requested(by: head([("Content-Type", "application/octet-stream"), ("Accept", "text/plain")])) == .binary)
        #expect(HTTPBodyShape.text.matches(contentType: "text/plain;charset=UTF-8"))
        #expect(!HTTPBodyShape.binary.matches(contentType: "text/html"))
    }

    /// Base64 takes 4 bytes for 3 and a line end: a text body of a given wire size holds a quarter less.
    @Test func aTextBodyOfAGivenSizeHoldsAQuarterFewerRecordBytes() {
        #expect(HTTPBodyShape.binary.recordBytes(inWireBytes: 65536) == 65536)
        let bytes = HTTPBodyShape.text.recordBytes(inWireBytes: 65536)
        let line = HTTPBodyShape.text.wire(ByteBuffer(repeating: 7, count: bytes), allocator: ByteBufferAllocator())
        #expect(line.readableBytes <= 65536)
        #expect(line.readableBytes > 65536 - 8)
    }
}
