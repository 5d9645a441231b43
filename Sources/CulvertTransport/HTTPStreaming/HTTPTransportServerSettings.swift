public import NIOCore

/// Server-side limits and timers of the HTTP listener (every transport starts with an HTTP request) and of the chunked
/// and polling transports.
public struct HTTPTransportServerSettings: Sendable {
    /// How long a polling GET is held when there is nothing to send (common reverse proxies cut at 50–60 s).
    public var pollHoldTime: TimeAmount
    /// A connection with no request for this long is closed and everything it held is freed.
    public var idleTimeout: TimeAmount
    /// A streaming response is ended (and the client asks for the next) after this many bytes…
    public var streamResponseLimitBytes: Int
    /// …or after this long, before proxies' limits on response size and age cut it.
    public var streamResponseMaxAge: TimeAmount
    /// Largest polling response body.
    public var maximumPollResponseBytes: Int
    /// Unacknowledged bytes the server holds for the client before it stops taking more from the session.
    public var sendWindowBytes: Int
    /// Time a new TCP connection has to deliver its first complete request head (slow senders are cut).
    public var requestHeadTimeout: TimeAmount = .seconds(10)
    /// Largest request head: the request line and every header together, and any one of them.
    public var maximumHeaderBytes: Int = 16 * 1024
    /// Most header fields in one request.
    public var maximumHeaderCount: Int = 64
    /// Upstream POSTs at once on one chunked or polling connection (a client sends one at a time; a held GET is one
    /// at a time anyway, a newer one replaces it); more get 429.
    public var maximumPendingRequests: Int = 4
    /// Largest request body a stranger may send: any request on a connection whose session has not authenticated
    /// (a handshake takes a few hundred bytes), and any request outside the transport's endpoints.
    public var unauthenticatedBodyBytes: Int = 64 * 1024
    /// Time such a body has, in all, to arrive.
    public var unauthenticatedBodyTimeout: TimeAmount = .seconds(10)
    /// A signed upload that sends nothing for this long is cut (the session's keepalive sends every 25 s).
    public var uploadIdleTimeout: TimeAmount = .seconds(60)
    /// A signed upload is cut after this long in all (clients end theirs after 50 s).
    public var uploadMaximumAge: TimeAmount = .seconds(300)
    /// A signed upload that declares its length must arrive at this rate at least (after a first 10 s).
    public var minimumUploadBytesPerSecond: Int = 16 * 1024

    public init(
        pollHoldTime: TimeAmount = .seconds(25),
        idleTimeout: TimeAmount = .seconds(60),
        streamResponseLimitBytes: Int = 32 * 1024 * 1024,
        streamResponseMaxAge: TimeAmount = .seconds(50),
        maximumPollResponseBytes: Int = 1024 * 1024,
        sendWindowBytes: Int = 4 * 1024 * 1024
    ) {
        self.pollHoldTime = pollHoldTime
        self.idleTimeout = idleTimeout
        self.streamResponseLimitBytes = streamResponseLimitBytes
        self.streamResponseMaxAge = streamResponseMaxAge
        self.maximumPollResponseBytes = maximumPollResponseBytes
        self.sendWindowBytes = sendWindowBytes
    }
}
