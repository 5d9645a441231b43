@testable import CulvertTransport
import NIOCore
import NIOWebSocket
import Testing

/// The client's frame writer masks payloads eight bytes at a time while copying them.
@Suite struct WebSocketFrameWriterTests {
    /// A key's four bytes as the word the writer takes (its bytes in memory in wire order).
    static func word(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
    }

    /// An unmasked (server) frame is only its header; the payload is sent after it untouched.
    @Test func anUnmaskedFrameIsTheHeaderAlone() {
        for (length, header) in [(5, [0x82, 0x05]), (126, [0x82, 126, 0, 126]), (70_000, [0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70])] as [(Int, [UInt8])] {
            var frame = ByteBuffer()
            WebSocketFrameWriter.write(opcode: .binary, payload: ByteBuffer(repeating: 1, count: length), maskWord: nil, into: &frame)
            #expect(Array(frame.readableBytesView) == header, "length \(length)")
        }
    }

    /// RFC 6455 section 5.7's example: "Hello" masked with 37 fa 21 3d is 7f 9f 4d 51 58, after the header 81 85 and
    /// the key.
    @Test func aMaskedFrameMatchesTheRFCExample() throws {
        var frame = ByteBuffer()
        WebSocketFrameWriter.write(opcode: .text, payload: ByteBuffer(string: "Hello"), maskWord: Self.word([0x37, 0xFA, 0x21, 0x3D]), into: &frame)
        #expect(Array(frame.readableBytesView) == [0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
    }

    /// Masking is its own inverse for every length around the eight-byte words (whole words and a tail).
    @Test(arguments: [0, 1, 3, 7, 8, 9, 15, 16, 17, 4099])
    func maskingTwiceGivesThePayloadBack(length: Int) throws {
        let key = Self.word([0x01, 0x80, 0x7F, 0xFE])
        let payload = ByteBuffer(bytes: (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        var masked = ByteBuffer()
        WebSocketFrameWriter.appendMasked(payload, maskWord: key, to: &masked)
        #expect(length == 0 || masked != payload)
        var unmasked = ByteBuffer()
        WebSocketFrameWriter.appendMasked(masked, maskWord: key, to: &unmasked)
        #expect(unmasked == payload)
        // Byte by byte, as RFC 6455 defines it.
        let keyBytes: [UInt8] = [0x01, 0x80, 0x7F, 0xFE]
        #expect(Array(masked.readableBytesView) == payload.readableBytesView.enumerated().map { $0.element ^ keyBytes[$0.offset % 4] })
    }

    /// A payload masked part by part, each with the key rotated to where the part starts, is the payload masked
    /// whole: how a client masks a message written as several parts.
    @Test(arguments: [[1, 2], [3, 5, 8], [4, 4], [7, 0, 9, 13]])
    func maskingInPartsEqualsMaskingWhole(partLengths: [Int]) {
        let key = Self.word([0x11, 0x22, 0x33, 0x44])
        let parts = partLengths.enumerated().map { index, length in
            ByteBuffer(bytes: (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ index) })
        }
        var whole = ByteBuffer()
        for part in parts { whole.writeImmutableBuffer(part) }
        var maskedWhole = ByteBuffer()
        WebSocketFrameWriter.appendMasked(whole, maskWord: key, to: &maskedWhole)
        var maskedParts = ByteBuffer()
        var offset = 0
        for part in parts {
            WebSocketFrameWriter.appendMasked(part, maskWord: WebSocketFrameWriter.maskWord(key, fromPayloadOffset: offset), to: &maskedParts)
            offset += part.readableBytes
        }
        #expect(maskedParts == maskedWhole)
    }
}
