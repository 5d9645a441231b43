public import NIOCore

/// Client-side limits and timers of the chunked and polling transports.
public struct HTTPTransportClientSettings: Sendable {
    /// Largest POST body of the polling transport (and of chunked after it falls back to short POSTs): some
    /// proxies refuse bodies over 1 MiB.
    public var maximumPostBodyBytes: Int
    /// A streaming POST is ended (and the next one begun) after this many bytes…
    public var streamRequestLimitBytes: Int
    /// …or after this long, before proxies' limits on request size and age cut it.
    public var streamRequestMaxAge: TimeAmount
    /// When the server has not acknowledged any upstream byte of an open streaming POST for this long, the
    /// path buffers request bodies: the transport switches upstream to short POSTs.
    public var upstreamAckTimeout: TimeAmount
    /// Time allowed for a response to a POST, or for the head of a streaming GET.
    public var requestTimeout: TimeAmount
    /// Time allowed for a polling GET (longer than the server's hold time).
    public var pollResponseTimeout: TimeAmount
    /// Consecutive failed requests tolerated (with exponential backoff from 100 ms) before the transport
    /// connection is declared lost.
    public var maximumRetries: Int
    /// Unacknowledged bytes the client holds for the server before it stops taking more from the session.
    public var sendWindowBytes: Int
    /// The body shapes to use, in order: the transport starts in the first, and moves to the next when something
    /// in the path refuses it (a content rule). One shape only: no fallback (`--body-shape`).
    public var bodyShapes: [HTTPBodyShape]
    /// The last step after every shape was refused: bodies of at most this many bytes each way (a proxy's size
    /// limit on replies or requests refuses larger ones, whatever their type).
    public var smallBodyBytes = 64 * 1024

    public init(
        maximumPostBodyBytes: Int = 512 * 1024,
        streamRequestLimitBytes: Int = 32 * 1024 * 1024,
        streamRequestMaxAge: TimeAmount = .seconds(50),
        upstreamAckTimeout: TimeAmount = .seconds(3),
        requestTimeout: TimeAmount = .seconds(30),
        pollResponseTimeout: TimeAmount = .seconds(45),
        maximumRetries: Int = 6,
        sendWindowBytes: Int = 4 * 1024 * 1024,
        bodyShapes: [HTTPBodyShape] = HTTPBodyShape.fallbackOrder
    ) {
        self.maximumPostBodyBytes = maximumPostBodyBytes
        self.streamRequestLimitBytes = streamRequestLimitBytes
        self.streamRequestMaxAge = streamRequestMaxAge
        self.upstreamAckTimeout = upstreamAckTimeout
        self.requestTimeout = requestTimeout
        self.pollResponseTimeout = pollResponseTimeout
        self.maximumRetries = maximumRetries
        self.sendWindowBytes = sendWindowBytes
        self.bodyShapes = bodyShapes.isEmpty ? HTTPBodyShape.fallbackOrder : bodyShapes
    }
}

extension HTTPTransportClientSettings {
    /// The wait before retry number `failures` of a failed request: 100 ms, doubling, at most 25.6 s.
    func retryDelay(afterFailures failures: Int) -> TimeAmount {
        .milliseconds(Int64(100 << min(max(failures, 1) - 1, 8)))
    }
}
