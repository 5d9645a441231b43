import NIOCore

/// One record in the bodies of the chunked and polling transports (see docs/PROTOCOL.md, "HTTP transports").
///
/// ```
/// DATA   'D' | offset u64 | length u32 | payload    bytes of the carried stream, at their offset in it
/// ACK    'A' | offset u64                           every byte before offset arrived (the other direction)
/// CLOSE  'C'                                        the sender closes the transport connection
/// ```
/// Offsets make retried and replaced requests safe: a receiver keeps only bytes it has not seen, in order.
enum HTTPTransportRecord: Equatable, Sendable {
    case data(offset: UInt64, payload: ByteBuffer)
    case acknowledge(UInt64)
    case close

    static let dataHeaderLength = 13

    /// Appends the record to `buffer`.
    func write(to buffer: inout ByteBuffer) {
        switch self {
        case .data(let offset, let payload):
            Self.writeDataHeader(offset: offset, length: payload.readableBytes, to: &buffer)
            buffer.writeImmutableBuffer(payload)
        case .acknowledge(let offset):
            buffer.writeInteger(UInt8(ascii: "A"))
            buffer.writeInteger(offset)
        case .close:
            buffer.writeInteger(UInt8(ascii: "C"))
        }
    }

    /// Writes a DATA record's header; the payload follows it (possibly as a separate buffer).
    static func writeDataHeader(offset: UInt64, length: Int, to buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(ascii: "D"))
        buffer.writeInteger(offset)
        buffer.writeInteger(UInt32(length))
    }

    /// The record as a fresh buffer.
    func encoded(allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: 16)
        self.write(to: &buffer)
        return buffer
    }
}

/// Decodes ``HTTPTransportRecord``s from a body that arrives in pieces of any size.
struct HTTPTransportRecordDecoder: NIOSingleStepByteToMessageDecoder {
    typealias InboundOut = HTTPTransportRecord

    enum DecodingError: Error, Equatable, CustomStringConvertible {
        case unknownRecordType(UInt8)
        case recordTooLarge(Int)
        case truncated

        var description: String {
            switch self {
            case .unknownRecordType(let type): "unknown record type 0x\(String(type, radix: 16))"
            case .recordTooLarge(let length): "record of \(length) bytes is over the limit"
            case .truncated: "the body ended inside a record"
            }
        }
    }

    let maximumPayloadLength: Int

    mutating func decode(buffer: inout ByteBuffer) throws -> HTTPTransportRecord? {
        guard let type = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return nil }
        switch type {
        case UInt8(ascii: "D"):
            guard let length = buffer.getInteger(at: buffer.readerIndex + 9, as: UInt32.self) else { return nil }
            guard Int(length) <= self.maximumPayloadLength else { throw DecodingError.recordTooLarge(Int(length)) }
            guard buffer.readableBytes >= HTTPTransportRecord.dataHeaderLength + Int(length) else { return nil }
            buffer.moveReaderIndex(forwardBy: 1)
            let offset = buffer.readInteger(as: UInt64.self)!
            buffer.moveReaderIndex(forwardBy: 4)
            return .data(offset: offset, payload: buffer.readSlice(length: Int(length))!)
        case UInt8(ascii: "A"):
            guard buffer.readableBytes >= 9 else { return nil }
            buffer.moveReaderIndex(forwardBy: 1)
            return .acknowledge(buffer.readInteger(as: UInt64.self)!)
        case UInt8(ascii: "C"):
            buffer.moveReaderIndex(forwardBy: 1)
            return .close
        default:
            throw DecodingError.unknownRecordType(type)
        }
    }

    mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> HTTPTransportRecord? {
        if let record = try self.decode(buffer: &buffer) { return record }
        if seenEOF && buffer.readableBytes > 0 { throw DecodingError.truncated }
        return nil
    }
}

/// The record codec for the fuzzers.
@_spi(Fuzzing)
public enum HTTPTransportRecordFuzzing {
    /// Decodes `bytes` as a request or response body, fed in pieces of `pieceLength`; every record decoded must encode
    /// back to the bytes it came from. Returns how many records were decoded before the end or the first error.
    public static func decodeAndReencode(_ bytes: [UInt8], pieceLength: Int) -> Int {
        let decoder = NIOSingleStepByteToMessageProcessor(
            HTTPTransportRecordDecoder(maximumPayloadLength: 64 * 1024), maximumBufferSize: 128 * 1024
        )
        var records: [HTTPTransportRecord] = []
        var offset = 0
        do {
            while offset < bytes.count {
                let end = min(bytes.count, offset + max(1, pieceLength))
                try decoder.process(buffer: ByteBuffer(bytes: bytes[offset..<end])) { records.append($0) }
                offset = end
            }
            try decoder.finishProcessing(seenEOF: true) { records.append($0) }
        } catch {
            // Malformed input is refused, which is the point; what was decoded before must still round-trip.
        }
        var position = 0
        for record in records {
            let encoded = Array(record.encoded().readableBytesView)
            precondition(
                Array(bytes[position..<min(bytes.count, position + encoded.count)]) == encoded,
                "record \(record) does not encode back to the bytes it was decoded from"
            )
            position += encoded.count
        }
        return records.count
    }

    /// Decodes `bytes` as a text-shaped body (``HTTPBodyShape/text``), fed in pieces of `pieceLength`; what it decodes
    /// must come back the same through the encoder and the decoder again, and the records in it decode as above.
    /// Returns how many bytes were decoded before the end or the first error.
    public static func decodeTextBody(_ bytes: [UInt8], pieceLength: Int) -> Int {
        var decoder = Base64LineDecoder()
        var decoded = ByteBuffer()
        var offset = 0
        do {
            while offset < bytes.count {
                let end = min(bytes.count, offset + max(1, pieceLength))
                var piece = try decoder.decode(ByteBuffer(bytes: bytes[offset..<end]))
                decoded.writeBuffer(&piece)
                offset = end
            }
            try decoder.finish()
        } catch {
            // Malformed text is refused; what was decoded before it must still round-trip.
        }
        var again = Base64LineDecoder()
        let line = HTTPBodyShape.text.wire(decoded, allocator: ByteBufferAllocator())
        let roundTrip = try? again.decode(line)
        precondition(roundTrip == decoded, "a text body's bytes do not come back through the encoder and decoder")
        _ = Self.decodeAndReencode(Array(decoded.readableBytesView), pieceLength: pieceLength)
        return decoded.readableBytes
    }
}
