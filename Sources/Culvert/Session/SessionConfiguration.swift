public import CulvertCore
public import NIOCore

/// Settings of one tunnel session, the same for client and server unless noted.
public struct SessionConfiguration: Sendable {
    /// The shared token; nil when authentication is off.
    public var token: String?
    /// Server only: whether a client must prove it holds the token (false with `--no-auth`).
    public var authenticationRequired: Bool
    /// Client: the named user it authenticates as (`--user`), with `token` as that user's token; nil for the
    /// server's shared token.
    public var user: String?
    /// Server: its named users and their limits (`--users`); nil when the shared token is all it knows.
    public var users: UserLookup?
    /// Server: refuses a HELLO that would start a new session (not a resumption) with this message, while it says
    /// one (a draining server).
    public var refusesNewSession: (@Sendable () -> String?)?
    /// Where the session reports its figures (sessions and streams open, bytes, resumes, GOAWAYs); nil: nowhere,
    /// and the data path does no metrics work at all.
    public var metrics: TunnelMetrics?
    /// Client: the session only probes the path (``Capabilities/probe``): it will carry nothing and end at once.
    public var isProbe = false
    /// End-to-end protection: every frame after the handshake sealed with keys only the two ends hold
    /// (``SessionCipher``). Off (`--no-session-encryption`) only where both sides turn it off.
    public var sealing = true
    public var mux: MuxConfiguration
    /// A ping is sent after this long without inbound traffic (below common proxies' 30–60 s idle timeouts).
    public var keepaliveInterval: TimeAmount
    /// The transport is declared dead when a ping's pong takes longer than this.
    public var keepaliveTimeout: TimeAmount
    /// The handshake must finish within this time.
    public var handshakeTimeout: TimeAmount
    /// Received frames are acknowledged at most this long after they arrive.
    public var ackDelay: TimeAmount
    /// Pending outbound frames are sent as one transport message once they reach this size.
    public var maximumBatchSize: Int
    /// Client: whether to ask for compression. Server: whether to agree.
    public var compression: CompressionSettings
    /// Whether a lost transport connection leaves the session waiting to be resumed (instead of ending it).
    public var resumption: Bool
    /// Server: how long a session whose transport was lost waits to be resumed before its streams are closed.
    public var detachedGracePeriod: TimeAmount

    public init(
        token: String?,
        authenticationRequired: Bool = true,
        mux: MuxConfiguration = MuxConfiguration(),
        keepaliveInterval: TimeAmount = .seconds(25),
        keepaliveTimeout: TimeAmount = .seconds(10),
        handshakeTimeout: TimeAmount = .seconds(10),
        ackDelay: TimeAmount = .milliseconds(20),
        maximumBatchSize: Int = 64 * 1024,
        compression: CompressionSettings = CompressionSettings(enabled: false),
        resumption: Bool = true,
        detachedGracePeriod: TimeAmount = .seconds(60)
    ) {
        self.token = token
        self.authenticationRequired = authenticationRequired
        self.mux = mux
        self.keepaliveInterval = keepaliveInterval
        self.keepaliveTimeout = keepaliveTimeout
        self.handshakeTimeout = handshakeTimeout
        self.ackDelay = ackDelay
        self.maximumBatchSize = maximumBatchSize
        self.compression = compression
        self.resumption = resumption
        self.detachedGracePeriod = detachedGracePeriod
    }
}
