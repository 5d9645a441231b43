/// Why a byte sequence is not a valid Culvert frame. Each of these ends the session with GOAWAY.
public enum FrameDecodingError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The header names a type this version does not know.
    case unknownFrameType(UInt8)
    /// The header announces a payload longer than the receiver accepts.
    case payloadTooLarge(length: Int, maximum: Int)
    /// The payload does not have the layout its type requires.
    case malformedPayload(FrameType, String)
    /// A HELLO or CHALLENGE of another protocol version (whose layout this one does not read).
    case unsupportedVersion(UInt8)

    public var description: String {
        switch self {
        case .unknownFrameType(let type):
            "unknown frame type 0x\(String(type, radix: 16))"
        case .payloadTooLarge(let length, let maximum):
            "frame payload of \(length) bytes exceeds the maximum of \(maximum)"
        case .malformedPayload(let type, let reason):
            "malformed \(type) frame: \(reason)"
        case .unsupportedVersion(let version):
            "peer speaks protocol version \(version); this culvert speaks \(HandshakeStateMachine.protocolVersion): run the same release on both sides"
        }
    }

    /// The GOAWAY code a receiver sends for this error.
    public var goAwayCode: GoAwayCode {
        switch self {
        case .payloadTooLarge: .frameTooLarge
        case .unsupportedVersion: .unsupportedVersion
        default: .protocolError
        }
    }
}
