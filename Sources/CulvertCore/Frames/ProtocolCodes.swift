/// Why a peer refused to open a stream (carried by OPEN_FAIL).
public struct OpenFailReason: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// The server's allowlist does not permit this target.
    public static let notAllowed = OpenFailReason(rawValue: 1)
    /// The target actively refused the TCP connection.
    public static let connectionRefused = OpenFailReason(rawValue: 2)
    /// The target's host name did not resolve.
    public static let unresolvable = OpenFailReason(rawValue: 3)
    /// The target did not answer in time.
    public static let timedOut = OpenFailReason(rawValue: 4)
    /// The session has as many streams as it may have.
    public static let tooManyStreams = OpenFailReason(rawValue: 5)
    /// The peer is shutting down and takes no new streams.
    public static let goingAway = OpenFailReason(rawValue: 6)
    /// Any other failure; the message says what.
    public static let other = OpenFailReason(rawValue: 0xFFFF)

    public var description: String {
        switch self {
        case .notAllowed: "not allowed"
        case .connectionRefused: "connection refused"
        case .unresolvable: "host not found"
        case .timedOut: "timed out"
        case .tooManyStreams: "too many streams"
        case .goingAway: "server going away"
        case .other: "failed"
        default: "code \(self.rawValue)"
        }
    }
}

/// Why a stream was aborted (carried by RST).
public struct ResetCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// The application on one end aborted its connection.
    public static let cancelled = ResetCode(rawValue: 1)
    /// The peer sent more than its credit, or a window update overflowed.
    public static let flowControlError = ResetCode(rawValue: 2)
    /// A frame named a stream that does not exist.
    public static let unknownStream = ResetCode(rawValue: 3)
    /// A stream frame broke the stream's state rules (e.g. DATA after FIN).
    public static let protocolError = ResetCode(rawValue: 4)
    /// The local connection failed with an I/O error.
    public static let connectionError = ResetCode(rawValue: 5)
    /// A compressed frame inflated past the maximum frame size.
    public static let decompressionBomb = ResetCode(rawValue: 6)
    /// The target (or the local application) reset its TCP connection: the receiver resets its socket too, so the
    /// application on its side sees a reset, never a clean end of a truncated transfer.
    public static let connectionReset = ResetCode(rawValue: 7)

    public var description: String {
        switch self {
        case .cancelled: "cancelled"
        case .flowControlError: "flow-control error"
        case .unknownStream: "unknown stream"
        case .protocolError: "protocol error"
        case .connectionError: "connection error"
        case .decompressionBomb: "decompression bomb"
        case .connectionReset: "connection reset"
        default: "code \(self.rawValue)"
        }
    }
}

/// Why a session ended (carried by GOAWAY).
public struct GoAwayCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// A graceful end: open streams finish, no new ones are accepted.
    public static let normal = GoAwayCode(rawValue: 0)
    /// The peer sent something that breaks the protocol.
    public static let protocolError = GoAwayCode(rawValue: 1)
    /// The token proof did not verify.
    public static let authenticationFailed = GoAwayCode(rawValue: 2)
    /// The peer speaks a protocol version this side does not.
    public static let unsupportedVersion = GoAwayCode(rawValue: 3)
    /// A frame was larger than the receiver allows.
    public static let frameTooLarge = GoAwayCode(rawValue: 4)
    /// The peer stopped answering keepalive pings.
    public static let keepaliveTimeout = GoAwayCode(rawValue: 5)
    /// The session could not be resumed (unknown id, expired, or wrong key).
    public static let resumeRefused = GoAwayCode(rawValue: 6)
    /// The server is at a configured limit.
    public static let overloaded = GoAwayCode(rawValue: 7)
    /// An unexpected internal failure.
    public static let internalError = GoAwayCode(rawValue: 8)
    /// Too many authentication attempts from the client's address: it waits and tries again (the message says how
    /// long); the token was not checked.
    public static let throttled = GoAwayCode(rawValue: 9)
    /// End-to-end protection is on at one side and off at the other (the message says which): only a change of
    /// settings fixes it.
    public static let protectionMismatch = GoAwayCode(rawValue: 10)

    public var description: String {
        switch self {
        case .normal: "normal shutdown"
        case .protocolError: "protocol error"
        case .authenticationFailed: "authentication failed"
        case .unsupportedVersion: "unsupported protocol version"
        case .frameTooLarge: "frame too large"
        case .keepaliveTimeout: "keepalive timeout"
        case .resumeRefused: "resume refused"
        case .overloaded: "overloaded"
        case .internalError: "internal error"
        case .throttled: "throttled"
        case .protectionMismatch: "end-to-end protection mismatch"
        default: "code \(self.rawValue)"
        }
    }
}
