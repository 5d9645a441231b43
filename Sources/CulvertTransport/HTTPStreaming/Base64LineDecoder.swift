import NIOCore

/// Decodes a text-shaped body (``HTTPBodyShape/text``: lines of base64) that arrives in pieces of any size, back
/// into the record bytes, as it comes: four characters at a time, so no line is held whole and nothing but the
/// record decoder after it needs a length limit.
struct Base64LineDecoder {
    enum DecodingError: Error, Equatable, CustomStringConvertible {
        case notBase64(UInt8)
        case lineEndsMidGroup
        case paddingInsideLine
        case truncated

        var description: String {
            switch self {
            case .notBase64(let byte): "byte 0x\(String(byte, radix: 16)) in a text body is not base64"
            case .lineEndsMidGroup: "a line of a text body ends inside a group of four characters"
            case .paddingInsideLine: "a text body has characters after the padding of its line"
            case .truncated: "the text body ended inside a line"
            }
        }
    }

    /// Characters of the group of four not yet complete, and how many.
    private var group: UInt32 = 0
    private var count = 0
    /// Padding characters seen in the current group (1 or 2 at a line's end).
    private var padding = 0
    /// The line's last group was padded: only its end may follow.
    private var lineDone = false

    /// The bytes `piece` completes.
    mutating func decode(_ piece: ByteBuffer) throws -> ByteBuffer {
        var output = ByteBuffer()
        try piece.withUnsafeReadableBytes { input in
            _ = try output.writeWithUnsafeMutableBytes(minimumWritableBytes: input.count / 4 * 3 + 3) { out in
                try self.decode(input, into: out)
            }
        }
        return output
    }

    /// Decodes `input` into `out` (room for all it can complete) and returns how many bytes it wrote.
    private mutating func decode(_ input: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer) throws -> Int {
        var written = 0
        for character in input {
            let value = Base64.decodingTable[Int(character)]
            switch value {
            case Base64.lineEnd:
                guard self.count == 0 else { throw DecodingError.lineEndsMidGroup }
                self.lineDone = false
                continue
            case Base64.padding:
                guard self.count >= 2, !self.lineDone else { throw DecodingError.paddingInsideLine }
                self.padding += 1
                self.group <<= 6
            case Base64.invalid:
                throw DecodingError.notBase64(character)
            default:
                guard !self.lineDone, self.padding == 0 else { throw DecodingError.paddingInsideLine }
                self.group = self.group << 6 | UInt32(value)
            }
            self.count += 1
            guard self.count == 4 else { continue }
            out[written] = UInt8(truncatingIfNeeded: self.group >> 16)
            written += 1
            if self.padding < 2 {
                out[written] = UInt8(truncatingIfNeeded: self.group >> 8)
                written += 1
            }
            if self.padding < 1 {
                out[written] = UInt8(truncatingIfNeeded: self.group)
                written += 1
            }
            self.lineDone = self.padding > 0
            self.group = 0
            self.count = 0
            self.padding = 0
        }
        return written
    }

    /// Throws when the body ended inside a group.
    func finish() throws {
        guard self.count == 0 else { throw DecodingError.truncated }
    }
}
