import NIOCore
import NIOWebSocket

/// Reads RFC 6455 frames (section 5.2) off the front of a connection's bytes: control frames whole, data frames
/// whole or (when asked) as soon as their header is in, so a large frame's payload can be passed on as it arrives.
///
/// Written here rather than taken from NIOWebSocket's `WebSocketFrameDecoder` because that decoder boxes every frame
/// in a heap-allocated `WebSocketFrame` (one allocation per message on each side) and leaves unmasking to a copy;
/// this parser hands back the payload as a slice of the bytes read, so the handler above forwards it untouched (a
/// client's downstream) or unmasks it into a buffer it reuses (a server's upstream).
struct WebSocketFrameParser {
    /// One frame's header and its payload, still masked if it came with a key.
    struct Frame {
        var fin: Bool
        /// RSV1–RSV3 as the high nibble's lower three bits of the first byte (0 when none is set).
        var reservedBits: UInt8
        var opcode: WebSocketOpcode
        /// The masking key as its four bytes lie in memory (see ``WebSocketFrameWriter/appendMasked(_:maskWord:to:)``).
        var maskWord: UInt32?
        /// The payload read so far: all of it, unless the frame is a data frame read with `streamingData`.
        var payload: ByteBuffer
        /// The payload bytes that follow `payload` and have not arrived yet (0 when the frame is whole).
        var remainingPayloadLength: Int = 0

        /// The payload read so far with any mask removed, in a buffer of its own (for control frames, at most 125
        /// bytes; data payloads are unmasked into a reused buffer by the handler).
        var unmaskedPayload: ByteBuffer {
            guard let maskWord = self.maskWord else { return self.payload }
            var plain = ByteBuffer()
            WebSocketFrameWriter.appendMasked(self.payload, maskWord: maskWord, to: &plain)
            return plain
        }
    }

    /// What makes a frame unreadable; the connection cannot go on after it.
    enum ParseError: Error, Equatable {
        /// The header announces more payload than this side accepts.
        case frameTooLarge(announced: UInt64, maximum: Int)
        /// A control frame (close, ping, pong) with a payload over 125 bytes.
        case controlFrameTooLong
        /// A control frame without FIN.
        case fragmentedControlFrame
    }

    /// The largest payload accepted in one frame.
    let maximumFrameSize: Int

    /// Parses the frame at the front of `buffer` and consumes it; returns nil, consuming nothing, while the buffer
    /// does not hold the whole frame yet. With `streamingData`, a binary or continuation frame is returned as soon
    /// as its header is in, with the payload bytes there are and the count of those still to come (the caller reads
    /// them off the stream itself). A frame too large is refused as soon as its header arrives.
    func parse(_ buffer: inout ByteBuffer, streamingData: Bool = false) throws(ParseError) -> Frame? {
        let start = buffer.readerIndex
        guard let first = buffer.getInteger(at: start, as: UInt8.self),
            let second = buffer.getInteger(at: start + 1, as: UInt8.self)
        else { return nil }
        // Any four bits make an opcode (the reserved ones are the handler's to refuse).
        let opcode = WebSocketOpcode(encodedWebSocketOpcode: first & 0x0F)!
        let fin = first & 0x80 != 0
        if opcode.isControlOpcode {
            guard fin else { throw .fragmentedControlFrame }
            guard second & 0x7F <= 125 else { throw .controlFrameTooLong }
        }
        var offset = start + 2
        let length: UInt64
        switch second & 0x7F {
        case 126:
            guard let extended = buffer.getInteger(at: offset, as: UInt16.self) else { return nil }
            length = UInt64(extended)
            offset += 2
        case 127:
            guard let extended = buffer.getInteger(at: offset, as: UInt64.self) else { return nil }
            length = extended
            offset += 8
        case let short:
            length = UInt64(short)
        }
        guard length <= UInt64(self.maximumFrameSize) else {
            throw .frameTooLarge(announced: length, maximum: self.maximumFrameSize)
        }
        var maskWord: UInt32?
        if second & 0x80 != 0 {
            // Read in the host's byte order, so that the word's bytes in memory are the key's bytes in wire order.
            guard let word = buffer.getInteger(at: offset, endianness: .host, as: UInt32.self) else { return nil }
            maskWord = word
            offset += 4
        }
        let available = buffer.writerIndex - offset
        let isStreamed = streamingData && !opcode.isControlOpcode && available < Int(length)
        let present = isStreamed ? available : Int(length)
        guard let payload = buffer.getSlice(at: offset, length: present) else { return nil }
        buffer.moveReaderIndex(to: offset + present)
        return Frame(
            fin: fin,
            reservedBits: (first >> 4) & 0x07,
            opcode: opcode,
            maskWord: maskWord,
            payload: payload,
            remainingPayloadLength: Int(length) - present
        )
    }
}

/// The frame parser and writer for the fuzzers.
@_spi(Fuzzing)
public enum WebSocketFrameFuzzing {
    /// Parses `bytes` as WebSocket frames; every frame read must write back (``WebSocketFrameWriter``) to bytes that
    /// parse to the same opcode, key and unmasked payload. Returns how many frames were read before the end or the
    /// first error.
    public static func parseAndRewrite(_ bytes: [UInt8], maximumFrameSize: Int) -> Int {
        let parser = WebSocketFrameParser(maximumFrameSize: maximumFrameSize)
        var buffer = ByteBuffer(bytes: bytes)
        var count = 0
        while let frame = try? parser.parse(&buffer) {
            count += 1
            let plain = frame.unmaskedPayload
            var written = ByteBuffer()
            WebSocketFrameWriter.write(opcode: frame.opcode, payload: plain, maskWord: frame.maskWord, into: &written)
            if frame.maskWord == nil { written.writeImmutableBuffer(plain) }
            let again = try? parser.parse(&written)
            precondition(
                again.map { ($0.opcode, $0.maskWord, $0.unmaskedPayload) == (frame.opcode, frame.maskWord, plain) } == true,
                "a \(frame.opcode) frame of \(plain.readableBytes) bytes does not survive writing"
            )
            precondition(written.readableBytes == 0, "a rewritten frame left \(written.readableBytes) bytes unread")
        }
        return count
    }
}
