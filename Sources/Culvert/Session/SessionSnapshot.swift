public import CulvertTransport
public import NIOCore

/// What a session reports about itself at one moment, read on its loop: the way owners and tests on other threads
/// see a session, whose live state only its loop may touch.
public struct SessionSnapshot: Sendable, Hashable {
    /// The session's counters so far.
    public var statistics: SessionStatistics
    /// Times the session was resumed on a new transport connection.
    public var resumptions: Int
    /// The transport that carries the session (nil while it waits to be resumed, or once it ended).
    public var transportKind: TransportKind?
    /// Streams open now.
    public var streamCount: Int
    /// The transport was lost; the session waits to be resumed.
    public var isDetached: Bool
    /// Both sides agreed on compression in the handshake.
    public var compressionEnabled: Bool
    /// The session id in hex, once established (empty before).
    public var sessionIDString: String
    /// The named user the client authenticated as, once established; nil for the shared token.
    public var user: String?
    /// The last round trip measured on the session (by a PING or by keepalive).
    public var roundTrip: TimeAmount?
    /// Whether the current transport sends upstream in short requests because the path holds or cuts streaming
    /// request bodies (the chunked transport's fallback).
    public var upstreamUsesShortRequests: Bool
    /// The shape of the current chunked or polling transport's bodies (nil for the other transports).
    public var bodyShape: HTTPBodyShape?
    /// The body size limit the current chunked or polling transport learnt from the path, if it refused larger ones.
    public var bodyByteLimit: Int?
}
