public import NIOCore

/// A stream identifier. Streams opened by the client have odd ids, streams opened by the server even ids; `0` names
/// the session itself.
public typealias StreamID = UInt32

/// One Culvert frame: the unit of the session protocol. `docs/PROTOCOL.md` gives the byte layout of each case.
public enum Frame: Hashable, Sendable {
    case hello(Hello)
    case challenge(Challenge)
    case auth(Auth)
    case welcome(Welcome)

    /// Asks the peer to connect `streamID` to `target`; `initialWindow` is the credit the opener grants for data
    /// flowing back to it.
    case open(streamID: StreamID, initialWindow: UInt32, target: TargetAddress)
    /// The target is connected; `initialWindow` is the credit the accepter grants for data flowing to it.
    case openOK(streamID: StreamID, initialWindow: UInt32)
    case openFail(streamID: StreamID, reason: OpenFailReason, message: String)
    case data(streamID: StreamID, flags: DataFlags, payload: ByteBuffer)
    /// Adds `increment` bytes of credit to `streamID`.
    case window(streamID: StreamID, increment: UInt32)
    /// The sender will send no more DATA on `streamID` (a TCP half-close).
    case fin(streamID: StreamID)
    case rst(streamID: StreamID, code: ResetCode, message: String)
    /// Client to server: listen on `address` (bind host and port, 0 for any free one) and open a stream back to the
    /// client, with `address` as its target, for every connection accepted there (`-R`). `requestID` (odd, like the
    /// client's stream ids, and rising) names the listener in the answer.
    case listen(requestID: UInt32, address: TargetAddress)
    /// Server to client: the listener of `requestID` is bound, on `port`.
    case listenOK(requestID: UInt32, port: UInt16)
    /// Server to client: the listener of `requestID` was refused (not allowed, the port is taken, …).
    case listenFail(requestID: UInt32, reason: OpenFailReason, message: String)

    case ping(UInt64)
    case pong(UInt64)
    /// The sender has received `received` reliable frames in this session so far.
    case ack(received: UInt64)
    case goAway(code: GoAwayCode, message: String)
    /// Frames sealed with the attachment's key (``SessionCipher``): after the handshake, every frame a side sends
    /// travels inside one of these, so that no hop on the path can read, alter, drop, reorder or inject any.
    /// `payload` is the ciphertext followed by the 16-byte tag.
    case sealed(payload: ByteBuffer)

    public var type: FrameType {
        switch self {
        case .hello: .hello
        case .challenge: .challenge
        case .auth: .auth
        case .welcome: .welcome
        case .open: .open
        case .openOK: .openOK
        case .openFail: .openFail
        case .data: .data
        case .window: .window
        case .fin: .fin
        case .rst: .rst
        case .listen: .listen
        case .listenOK: .listenOK
        case .listenFail: .listenFail
        case .ping: .ping
        case .pong: .pong
        case .ack: .ack
        case .goAway: .goAway
        case .sealed: .sealed
        }
    }

    /// The stream this frame belongs to (for the listener frames, their request id), or `0` for session frames.
    public var streamID: StreamID {
        switch self {
        case .open(let id, _, _), .openOK(let id, _), .openFail(let id, _, _), .data(let id, _, _),
            .window(let id, _), .fin(let id), .rst(let id, _, _), .listen(let id, _), .listenOK(let id, _),
            .listenFail(let id, _, _):
            id
        default:
            0
        }
    }
}

/// Per-frame flags of a DATA frame.
public struct DataFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// The payload is raw deflate output of the stream's compression context, ending in a sync flush.
    public static let compressed = DataFlags(rawValue: 0x01)
}

/// Capability bits exchanged in the handshake; the session uses the intersection of both sides'.
public struct Capabilities: OptionSet, Hashable, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Per-stream deflate compression of DATA payloads.
    public static let compression = Capabilities(rawValue: 0x01)
    /// The session may be resumed on a new transport connection.
    public static let resumption = Capabilities(rawValue: 0x02)
    /// Client only: this session only checks that the path works (a transport probe); it carries no stream and
    /// ends at once, so a server does not count it against a user's session limit.
    public static let probe = Capabilities(rawValue: 0x04)
    /// End-to-end protection: every frame after the handshake is sealed (``Frame/sealed(payload:)``). A side that
    /// offers it requires it: a peer without it is refused, so that no hop can strip it from the handshake.
    public static let sealed = Capabilities(rawValue: 0x08)
}
