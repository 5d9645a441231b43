import NIOCore
import NIOWebSocket

/// Encodes WebSocket frames (RFC 6455 section 5.2) straight to bytes, masking client payloads eight bytes at a time
/// while copying them.
///
/// NIO's encoder masks a byte at a time in place, which on a client also forces a copy of every shared payload;
/// masking during the one copy that must happen anyway makes the client's upstream several times cheaper. The
/// caller passes the buffer to write into, so that it can reuse one the socket has let go of.
enum WebSocketFrameWriter {
    /// The most bytes a frame header takes: 2, a 64-bit length, a key.
    static let maximumHeaderLength = 14

    /// Writes a whole frame into `buffer`: the header and, with a mask key (a client), the masked payload. Without a
    /// key only the header is written, and the caller sends `payload` itself after it (no copy).
    static func write(
        opcode: WebSocketOpcode,
        payload: ByteBuffer,
        maskWord: UInt32?,
        into buffer: inout ByteBuffer
    ) {
        Self.writeHeader(opcode: opcode, payloadLength: payload.readableBytes, maskWord: maskWord, into: &buffer)
        if let maskWord { Self.appendMasked(payload, maskWord: maskWord, to: &buffer) }
    }

    /// Writes the header of a frame whose payload is `payloadLength` bytes (and the key, if any) into `buffer`.
    static func writeHeader(opcode: WebSocketOpcode, payloadLength length: Int, maskWord: UInt32?, into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(0x80) | UInt8(webSocketOpcode: opcode))
        let maskBit: UInt8 = maskWord == nil ? 0 : 0x80
        if length < 126 {
            buffer.writeInteger(maskBit | UInt8(length))
        } else if length <= Int(UInt16.max) {
            buffer.writeInteger(maskBit | 126)
            buffer.writeInteger(UInt16(length))
        } else {
            buffer.writeInteger(maskBit | 127)
            buffer.writeInteger(UInt64(length))
        }
        if let maskWord { buffer.writeInteger(maskWord, endianness: .host) }
    }

    /// The key as it applies from payload byte `offset` on: its bytes rotated, so that a payload made of several
    /// parts is masked part by part with ``appendMasked(_:maskWord:to:)``.
    static func maskWord(_ word: UInt32, fromPayloadOffset offset: Int) -> UInt32 {
        let shift = offset % 4
        guard shift != 0 else { return word }
        var rotated: UInt32 = 0
        withUnsafeBytes(of: word) { source in
            withUnsafeMutableBytes(of: &rotated) { target in
                for index in 0..<4 { target[index] = source[(index + shift) % 4] }
            }
        }
        return rotated
    }

    /// Appends `source` XOR the repeating 4-byte key (starting at key index 0) to `destination`. `maskWord` holds
    /// the key's four bytes in memory order (as ``WebSocketFrameParser`` reads it and `writeInteger(_:endianness:
    /// .host)` writes it).
    static func appendMasked(_ source: ByteBuffer, maskWord key32: UInt32, to destination: inout ByteBuffer) {
        let count = source.readableBytes
        let key64 = UInt64(key32) | (UInt64(key32) << 32)
        destination.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { output in
            source.withUnsafeReadableBytes { input in
                var index = 0
                while index + 8 <= count {
                    let word = input.loadUnaligned(fromByteOffset: index, as: UInt64.self)
                    output.storeBytes(of: word ^ key64, toByteOffset: index, as: UInt64.self)
                    index += 8
                }
                while index < count {
                    output[index] = input[index] ^ withUnsafeBytes(of: key32) { $0[index % 4] }
                    index += 1
                }
            }
            return count
        }
    }
}
