public import NIOCore

/// Reads frames from a byte stream; the inverse of ``FrameEncoder``.
///
/// It never buffers more than one frame header plus ``maximumPayloadLength`` bytes: a header that announces a
/// longer payload fails at once with ``FrameDecodingError/payloadTooLarge(length:maximum:)`` instead of waiting for
/// the bytes.
public struct FrameDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = Frame

    /// The longest payload accepted, in bytes.
    public var maximumPayloadLength: Int
    /// The longest SEALED payload accepted: room for the frames a peer may seal together, each no longer than
    /// ``maximumPayloadLength`` allows.
    public var maximumSealedPayloadLength: Int

    public init(maximumPayloadLength: Int) {
        self.maximumPayloadLength = maximumPayloadLength
        self.maximumSealedPayloadLength = SessionCipher.maximumSealedPayloadLength(
            maximumFrameLength: FrameEncoder.headerLength + maximumPayloadLength
        )
    }

    /// The length, header included, of the frame at the start of `buffer`; nil while its header is incomplete.
    /// Throws as ``decode(buffer:)`` does for an unknown type or a payload over the maximum.
    public func frameLength(in buffer: ByteBuffer) throws -> Int? {
        guard buffer.readableBytes >= FrameEncoder.headerLength else { return nil }
        let start = buffer.readerIndex
        let rawType = buffer.getInteger(at: start, as: UInt8.self)!
        guard FrameType(rawValue: rawType) != nil else {
            throw FrameDecodingError.unknownFrameType(rawType)
        }
        let length = Int(buffer.getInteger(at: start + 6, as: UInt32.self)!)
        let maximum = rawType == FrameType.sealed.rawValue ? self.maximumSealedPayloadLength : self.maximumPayloadLength
        guard length <= maximum else {
            throw FrameDecodingError.payloadTooLarge(length: length, maximum: maximum)
        }
        return FrameEncoder.headerLength + length
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> Frame? {
        guard let frameLength = try self.frameLength(in: buffer), buffer.readableBytes >= frameLength else { return nil }
        let start = buffer.readerIndex
        let type = FrameType(rawValue: buffer.getInteger(at: start, as: UInt8.self)!)!
        let flags = buffer.getInteger(at: start + 1, as: UInt8.self)!
        let streamID = buffer.getInteger(at: start + 2, as: UInt32.self)!
        let length = frameLength - FrameEncoder.headerLength

        buffer.moveReaderIndex(forwardBy: FrameEncoder.headerLength)
        var payload = buffer.readSlice(length: length)!
        return try Self.parse(type: type, flags: flags, streamID: streamID, payload: &payload)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> Frame? {
        try self.decode(buffer: &buffer)
    }

    // swiftlint:disable:next cyclomatic_complexity function_body_length
    static func parse(type: FrameType, flags: UInt8, streamID: StreamID, payload: inout ByteBuffer) throws -> Frame {
        func malformed(_ reason: String) -> FrameDecodingError { .malformedPayload(type, reason) }
        func requireLength(_ expected: Int) throws {
            guard payload.readableBytes == expected else {
                throw malformed("payload is \(payload.readableBytes) bytes, expected \(expected)")
            }
        }
        if type.isReliable {
            guard streamID != 0 else { throw malformed("stream id 0 is reserved for the session") }
        } else {
            guard streamID == 0 else { throw malformed("session frame carries stream id \(streamID)") }
        }
        let definedFlags: UInt8 = switch type {
        case .data: 0xFF  // checked below
        case .open, .listen: FrameEncoder.datagramFlag
        default: 0
        }
        if flags & ~definedFlags != 0 {
            throw malformed("flags 0x\(String(flags, radix: 16)) are not defined for this type")
        }
        let transport: TargetAddress.Transport = flags & FrameEncoder.datagramFlag != 0 ? .udp : .tcp

        switch type {
        case .hello:
            try Self.requireCurrentVersion(payload, type)
            guard payload.readableBytes >= 1 + 4 + 32 + 32 + 4 + 1 else { throw malformed("payload too short") }
            let version = payload.readInteger(as: UInt8.self)!
            let capabilities = Capabilities(rawValue: payload.readInteger(as: UInt32.self)!)
            let nonce = payload.readBytes(length: 32)!
            let keyShare = payload.readBytes(length: 32)!
            let maximumDataPayload = payload.readInteger(as: UInt32.self)!
            let resumeLength = Int(payload.readInteger(as: UInt8.self)!)
            guard payload.readableBytes >= resumeLength else { throw malformed("resume id length mismatch") }
            let resume = payload.readBytes(length: resumeLength)!
            var user = ""
            if let userLength = payload.readInteger(as: UInt8.self) {
                guard userLength > 0, Int(userLength) <= Hello.maximumUserLength, payload.readableBytes == Int(userLength),
                    let name = payload.readString(length: Int(userLength)), name.utf8.count == Int(userLength)
                else { throw malformed("user name length mismatch") }
                user = name
            }
            return .hello(
                Hello(
                    version: version,
                    capabilities: capabilities,
                    nonce: nonce,
                    keyShare: keyShare,
                    maximumDataPayload: maximumDataPayload,
                    resumeSessionID: resume,
                    user: user
                )
            )
        case .challenge:
            try Self.requireCurrentVersion(payload, type)
            try requireLength(1 + 4 + 32 + 32 + 4)
            return .challenge(
                Challenge(
                    version: payload.readInteger()!,
                    capabilities: Capabilities(rawValue: payload.readInteger()!),
                    nonce: payload.readBytes(length: 32)!,
                    keyShare: payload.readBytes(length: 32)!,
                    maximumDataPayload: payload.readInteger()!
                )
            )
        case .auth:
            try requireLength(32 + 8)
            return .auth(Auth(proof: payload.readBytes(length: 32)!, received: payload.readInteger()!))
        case .welcome:
            try requireLength(32 + 16 + 4 + 8)
            return .welcome(
                Welcome(
                    proof: payload.readBytes(length: 32)!,
                    sessionID: payload.readBytes(length: 16)!,
                    capabilities: Capabilities(rawValue: payload.readInteger()!),
                    received: payload.readInteger()!
                )
            )
        case .open:
            guard payload.readableBytes >= 4 + 2 + 1 else { throw malformed("payload too short") }
            let window = payload.readInteger(as: UInt32.self)!
            return .open(streamID: streamID, initialWindow: window, target: try Self.readAddress(&payload, type, transport: transport))
        case .openOK:
            try requireLength(4)
            return .openOK(streamID: streamID, initialWindow: payload.readInteger()!)
        case .openFail:
            guard payload.readableBytes >= 2 else { throw malformed("payload too short") }
            let reason = OpenFailReason(rawValue: payload.readInteger()!)
            return .openFail(streamID: streamID, reason: reason, message: try Self.readMessage(&payload, type))
        case .data:
            let dataFlags = DataFlags(rawValue: flags)
            guard DataFlags.compressed.isSuperset(of: dataFlags) else {
                throw malformed("unknown DATA flags 0x\(String(flags, radix: 16))")
            }
            return .data(streamID: streamID, flags: dataFlags, payload: payload)
        case .window:
            try requireLength(4)
            let increment = payload.readInteger(as: UInt32.self)!
            guard increment > 0 else { throw malformed("window increment of 0") }
            return .window(streamID: streamID, increment: increment)
        case .fin:
            try requireLength(0)
            return .fin(streamID: streamID)
        case .rst:
            guard payload.readableBytes >= 2 else { throw malformed("payload too short") }
            let code = ResetCode(rawValue: payload.readInteger()!)
            return .rst(streamID: streamID, code: code, message: try Self.readMessage(&payload, type))
        case .listen:
            guard payload.readableBytes >= 2 + 1 else { throw malformed("payload too short") }
            return .listen(requestID: streamID, address: try Self.readAddress(&payload, type, transport: transport))
        case .listenOK:
            try requireLength(2)
            return .listenOK(requestID: streamID, port: payload.readInteger()!)
        case .listenFail:
            guard payload.readableBytes >= 2 else { throw malformed("payload too short") }
            let reason = OpenFailReason(rawValue: payload.readInteger()!)
            return .listenFail(requestID: streamID, reason: reason, message: try Self.readMessage(&payload, type))
        case .ping:
            try requireLength(8)
            return .ping(payload.readInteger()!)
        case .pong:
            try requireLength(8)
            return .pong(payload.readInteger()!)
        case .ack:
            try requireLength(8)
            return .ack(received: payload.readInteger()!)
        case .goAway:
            guard payload.readableBytes >= 2 else { throw malformed("payload too short") }
            let code = GoAwayCode(rawValue: payload.readInteger()!)
            return .goAway(code: code, message: try Self.readMessage(&payload, type))
        case .sealed:
            guard payload.readableBytes >= SessionCipher.tagLength else { throw malformed("shorter than its tag") }
            return .sealed(payload: payload)
        }
    }

    /// HELLO and CHALLENGE begin with the protocol version: a peer of another version gets that said, not a
    /// complaint about a layout it does not share.
    private static func requireCurrentVersion(_ payload: ByteBuffer, _ type: FrameType) throws {
        guard let version = payload.getInteger(at: payload.readerIndex, as: UInt8.self) else {
            throw FrameDecodingError.malformedPayload(type, "payload too short")
        }
        guard version == HandshakeStateMachine.protocolVersion else { throw FrameDecodingError.unsupportedVersion(version) }
    }

    /// Port u16 then host (1 to 255 printable bytes, the rest of the payload), as OPEN and LISTEN carry them.
    private static func readAddress(_ payload: inout ByteBuffer, _ type: FrameType, transport: TargetAddress.Transport) throws -> TargetAddress {
        guard let port = payload.readInteger(as: UInt16.self) else { throw FrameDecodingError.malformedPayload(type, "payload too short") }
        guard payload.readableBytes <= 255 else { throw FrameDecodingError.malformedPayload(type, "host longer than 255 bytes") }
        // Strict UTF-8: invalid bytes must not be repaired into U+FFFD, or the host would not be the bytes sent
        // (and its re-encoding could pass 255 bytes).
        guard let bytes = payload.readBytes(length: payload.readableBytes), let host = String(validating: bytes, as: UTF8.self),
            !host.isEmpty, host.utf8.allSatisfy({ $0 > 0x20 && $0 != 0x7F })
        else {
            throw FrameDecodingError.malformedPayload(type, "host is not printable UTF-8")
        }
        return TargetAddress(host: host, port: Int(port), transport: transport)
    }

    private static func readMessage(_ payload: inout ByteBuffer, _ type: FrameType) throws -> String {
        guard payload.readableBytes <= FrameEncoder.maximumMessageLength else {
            throw FrameDecodingError.malformedPayload(type, "message longer than \(FrameEncoder.maximumMessageLength)")
        }
        return String(decoding: payload.readBytes(length: payload.readableBytes)!, as: UTF8.self)
    }
}
