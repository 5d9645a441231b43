import NIOCore

/// Standard base64 (RFC 4648) with padding: handshake header values, and the bodies of the text body shape.
enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    static func encode(_ bytes: [UInt8]) -> String {
        var output = ByteBuffer()
        Self.encode(ByteBuffer(bytes: bytes), appendingTo: &output)
        return String(buffer: output)
    }
}

extension Base64 {
    /// Appends the base64 of `input`'s readable bytes to `output` (the chunked and polling transports' text bodies).
    static func encode(_ input: ByteBuffer, appendingTo output: inout ByteBuffer) {
        input.withUnsafeReadableBytes { bytes in
            _ = output.writeWithUnsafeMutableBytes(minimumWritableBytes: (bytes.count + 2) / 3 * 4) { out in
                Self.alphabet.withUnsafeBufferPointer { alphabet in
                    var index = 0
                    var written = 0
                    while index + 3 <= bytes.count {
                        let value = UInt32(bytes[index]) << 16 | UInt32(bytes[index + 1]) << 8 | UInt32(bytes[index + 2])
                        out[written] = alphabet[Int(value >> 18)]
                        out[written + 1] = alphabet[Int((value >> 12) & 0x3F)]
                        out[written + 2] = alphabet[Int((value >> 6) & 0x3F)]
                        out[written + 3] = alphabet[Int(value & 0x3F)]
                        index += 3
                        written += 4
                    }
                    let remaining = bytes.count - index
                    guard remaining > 0 else { return written }
                    var value = UInt32(bytes[index]) << 16
                    if remaining == 2 { value |= UInt32(bytes[index + 1]) << 8 }
                    out[written] = alphabet[Int(value >> 18)]
                    out[written + 1] = alphabet[Int((value >> 12) & 0x3F)]
                    out[written + 2] = remaining == 2 ? alphabet[Int((value >> 6) & 0x3F)] : UInt8(ascii: "=")
                    out[written + 3] = UInt8(ascii: "=")
                    return written + 4
                }
            }
        }
    }

    /// Markers in ``decodingTable`` for what is not a 6-bit value.
    static let invalid: UInt8 = 0xFF
    static let padding: UInt8 = 0xFE
    static let lineEnd: UInt8 = 0xFD

    /// Each byte's 6-bit value, or ``invalid``, ``padding`` (`=`) or ``lineEnd`` (`\n`, `\r`).
    static let decodingTable: [UInt8] = {
        var table = [UInt8](repeating: Self.invalid, count: 256)
        for (value, character) in Self.alphabet.enumerated() { table[Int(character)] = UInt8(value) }
        table[Int(UInt8(ascii: "="))] = Self.padding
        table[Int(UInt8(ascii: "\n"))] = Self.lineEnd
        table[Int(UInt8(ascii: "\r"))] = Self.lineEnd
        return table
    }()
}
