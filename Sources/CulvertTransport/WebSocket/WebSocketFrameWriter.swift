import NIOCore
import NIOWebSocket

/// Encodes WebSocket frames (RFC 6455 section 5.2) straight to bytes, masking client payloads eight bytes at a time
/// while copying them.
///
/// NIO's encoder masks a byte at a time in place, which on a client also forces a copy of every shared payload;
/// masking during the one copy that must happen anyway makes the client's upstream several times cheaper.
enum WebSocketFrameWriter {
    /// The frame header, and the payload to send after it. With a mask key the payload is a masked copy in the same
    /// buffer as the header and the second element is nil; without one the payload is passed through untouched.
    static func encode(
        opcode: WebSocketOpcode,
        payload: ByteBuffer,
        maskKey: WebSocketMaskingKey?,
        allocator: ByteBufferAllocator
    ) -> (ByteBuffer, ByteBuffer?) {
        let length = payload.readableBytes
        var buffer = allocator.buffer(capacity: 14 + (maskKey == nil ? 0 : length))
        buffer.writeInteger(UInt8(0x80) | UInt8(webSocketOpcode: opcode))
        let maskBit: UInt8 = maskKey == nil ? 0 : 0x80
        if length < 126 {
            buffer.writeInteger(maskBit | UInt8(length))
        } else if length <= Int(UInt16.max) {
            buffer.writeInteger(maskBit | 126)
            buffer.writeInteger(UInt16(length))
        } else {
            buffer.writeInteger(maskBit | 127)
            buffer.writeInteger(UInt64(length))
        }
        guard let maskKey else { return (buffer, payload) }
        buffer.writeBytes(maskKey)
        Self.appendMasked(payload, key: maskKey, to: &buffer)
        return (buffer, nil)
    }

    /// Appends `source` XOR the repeating 4-byte `key` (starting at key index 0) to `destination`.
    static func appendMasked(_ source: ByteBuffer, key: WebSocketMaskingKey, to destination: inout ByteBuffer) {
        let count = source.readableBytes
        // The key's four bytes as a tuple (an Array of them would be a heap allocation per frame).
        let start = key.startIndex
        let keyBytes = (key[start], key[key.index(start, offsetBy: 1)], key[key.index(start, offsetBy: 2)], key[key.index(start, offsetBy: 3)])
        var key32: UInt32 = 0
        withUnsafeMutableBytes(of: &key32) { raw in
            raw[0] = keyBytes.0
            raw[1] = keyBytes.1
            raw[2] = keyBytes.2
            raw[3] = keyBytes.3
        }
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
