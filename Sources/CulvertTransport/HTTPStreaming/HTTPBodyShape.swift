import NIOCore
import NIOHTTP1

/// How the chunked and polling transports' bodies look to what sits in the path. Some proxies have content rules:
/// they refuse `application/octet-stream` (binary downloads blocked), or inspect bodies for binary data. The text
/// shape carries the same records as base64 lines under `text/plain`, as a web application's text would travel,
/// for a third more bytes. The client asks for a shape with `Accept` (and names its request body's with
/// `Content-Type`); the server answers each request in the shape it asked for (docs/PROTOCOL.md, "Body shapes").
public enum HTTPBodyShape: String, Sendable, CaseIterable, Codable {
    /// The records as they are: the fewest bytes.
    case binary
    /// The records in base64, one line per write (`text/plain; charset=utf-8`).
    case text

    /// The order the client tries them in when a path refuses one: cheapest first.
    public static let fallbackOrder: [HTTPBodyShape] = [.binary, .text]

    /// The `Content-Type` of a body in this shape.
    public var contentType: String {
        switch self {
        case .binary: "application/octet-stream"
        case .text: "text/plain; charset=utf-8"
        }
    }

    /// The shape a request asks for: its body's `Content-Type` when it has one, else its `Accept`; binary unless
    /// either names `text/plain` (so clients of earlier releases, which name neither, get what they always got).
    static func requested(by head: HTTPRequestHead) -> HTTPBodyShape {
        let named = head.headers["Content-Type"].first ?? head.headers["Accept"].first ?? ""
        return Self.mediaType(of: named) == "text/plain" ? .text : .binary
    }

    /// Whether a response's `Content-Type` is this shape's: a proxy that replaced the reply (a block page) sent
    /// something else.
    func matches(contentType: String?) -> Bool {
        Self.mediaType(of: contentType ?? "") == Self.mediaType(of: self.contentType)
    }

    /// `type/subtype` of a `Content-Type` or `Accept` value, lowercased, without parameters.
    static func mediaType(of value: String) -> String {
        let first = value.split(separator: ",").first ?? ""
        let type = first.split(separator: ";").first ?? ""
        return String(type.drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed()).lowercased()
    }

    /// `bytes` as they go on the wire in this shape: as they are, or as one base64 line.
    func wire(_ bytes: ByteBuffer, allocator: ByteBufferAllocator) -> ByteBuffer {
        switch self {
        case .binary:
            return bytes
        case .text:
            var line = allocator.buffer(capacity: (bytes.readableBytes + 2) / 3 * 4 + 1)
            Base64.encode(bytes, appendingTo: &line)
            line.writeInteger(UInt8(ascii: "\n"))
            return line
        }
    }

    /// The record bytes a body of at most `wireBytes` can hold in this shape (base64 takes 4 bytes for 3, and a
    /// line end).
    func recordBytes(inWireBytes wireBytes: Int) -> Int {
        self == .text ? max(0, (wireBytes - 1) / 4 * 3) : wireBytes
    }

    /// A decoder of bodies in this shape: nil for binary (the bytes are the records).
    func makeDecoder() -> Base64LineDecoder? {
        self == .text ? Base64LineDecoder() : nil
    }
}
