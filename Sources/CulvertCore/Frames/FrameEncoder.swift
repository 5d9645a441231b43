public import NIOCore

/// Writes frames in the Culvert wire format.
///
/// ```
///  0        1        2                 6                 10
/// +--------+--------+-----------------+-----------------+----------------
/// |  type  | flags  | stream id (u32) |  length (u32)   | payload (length bytes)
/// +--------+--------+-----------------+-----------------+----------------
/// ```
/// All integers are big-endian. `docs/PROTOCOL.md` gives each payload.
public struct FrameEncoder: Sendable {
    /// Bytes in every frame header.
    public static let headerLength = 10
    /// Human-readable text in OPEN_FAIL, RST and GOAWAY is cut to this many bytes.
    public static let maximumMessageLength = 1024

    public init() {}

    /// The flag of an OPEN or LISTEN whose address is UDP: the stream carries datagrams.
    public static let datagramFlag: UInt8 = 0x01

    /// Appends `frame` to `buffer`.
    public func encode(_ frame: Frame, into buffer: inout ByteBuffer) {
        let headerStart = buffer.writerIndex
        var flags: UInt8 = 0
        switch frame {
        case .data(_, let dataFlags, _): flags = dataFlags.rawValue
        case .open(_, _, let target), .listen(_, let target): flags = target.transport == .udp ? FrameEncoder.datagramFlag : 0
        default: break
        }
        buffer.writeInteger(frame.type.rawValue)
        buffer.writeInteger(flags)
        buffer.writeInteger(frame.streamID)
        buffer.writeInteger(UInt32(0))  // length, patched below
        let payloadStart = buffer.writerIndex

        switch frame {
        case .hello(let hello):
            buffer.writeInteger(hello.version)
            buffer.writeInteger(hello.capabilities.rawValue)
            buffer.writeBytes(hello.nonce)
            buffer.writeBytes(hello.keyShare)
            buffer.writeInteger(hello.maximumDataPayload)
            buffer.writeInteger(UInt8(hello.resumeSessionID.count))
            buffer.writeBytes(hello.resumeSessionID)
            if !hello.user.isEmpty {
                buffer.writeInteger(UInt8(hello.user.utf8.count))
                buffer.writeString(hello.user)
            }
        case .challenge(let challenge):
            buffer.writeInteger(challenge.version)
            buffer.writeInteger(challenge.capabilities.rawValue)
            buffer.writeBytes(challenge.nonce)
            buffer.writeBytes(challenge.keyShare)
            buffer.writeInteger(challenge.maximumDataPayload)
        case .auth(let auth):
            buffer.writeBytes(auth.proof)
            buffer.writeInteger(auth.received)
        case .welcome(let welcome):
            buffer.writeBytes(welcome.proof)
            buffer.writeBytes(welcome.sessionID)
            buffer.writeInteger(welcome.capabilities.rawValue)
            buffer.writeInteger(welcome.received)
        case .open(_, let initialWindow, let target):
            buffer.writeInteger(initialWindow)
            Self.writeAddress(target, into: &buffer)
        case .openOK(_, let initialWindow):
            buffer.writeInteger(initialWindow)
        case .openFail(_, let reason, let message):
            buffer.writeInteger(reason.rawValue)
            Self.writeMessage(message, into: &buffer)
        case .data(_, _, let payload):
            buffer.writeImmutableBuffer(payload)
        case .window(_, let increment):
            buffer.writeInteger(increment)
        case .fin:
            break
        case .rst(_, let code, let message):
            buffer.writeInteger(code.rawValue)
            Self.writeMessage(message, into: &buffer)
        case .listen(_, let address):
            Self.writeAddress(address, into: &buffer)
        case .listenOK(_, let port):
            buffer.writeInteger(port)
        case .listenFail(_, let reason, let message):
            buffer.writeInteger(reason.rawValue)
            Self.writeMessage(message, into: &buffer)
        case .ping(let value), .pong(let value):
            buffer.writeInteger(value)
        case .ack(let received):
            buffer.writeInteger(received)
        case .goAway(let code, let message):
            buffer.writeInteger(code.rawValue)
            Self.writeMessage(message, into: &buffer)
        case .sealed(let payload):
            buffer.writeImmutableBuffer(payload)
        }

        let length = UInt32(buffer.writerIndex - payloadStart)
        buffer.setInteger(length, at: headerStart + 6)
    }

    /// Appends the header of a DATA frame alone: its `payloadLength` bytes of payload are sent right after it from
    /// a buffer of their own (a gathered write), not copied behind the header.
    public func encodeDataHeader(streamID: StreamID, flags: DataFlags, payloadLength: Int, into buffer: inout ByteBuffer) {
        buffer.writeInteger(FrameType.data.rawValue)
        buffer.writeInteger(flags.rawValue)
        buffer.writeInteger(streamID)
        buffer.writeInteger(UInt32(payloadLength))
    }

    /// The encoded bytes of `frame` in a buffer of their own.
    public func encode(_ frame: Frame, allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: Self.headerLength + 64)
        self.encode(frame, into: &buffer)
        return buffer
    }

    /// Port u16, then the host: how OPEN and LISTEN carry an address.
    private static func writeAddress(_ address: TargetAddress, into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt16(truncatingIfNeeded: address.port))
        buffer.writeString(address.host)
    }

    private static func writeMessage(_ message: String, into buffer: inout ByteBuffer) {
        var utf8 = Array(message.utf8)
        if utf8.count > Self.maximumMessageLength {
            utf8 = Array(utf8.prefix(Self.maximumMessageLength))
        }
        buffer.writeBytes(utf8)
    }
}
