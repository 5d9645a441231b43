/// The client's first message: protocol version, what it can do, a fresh nonce and an ephemeral key share.
public struct Hello: Hashable, Sendable {
    public var version: UInt8
    public var capabilities: Capabilities
    /// 32 fresh random bytes.
    public var nonce: [UInt8]
    /// The client's ephemeral X25519 public key (32 bytes), fresh for this handshake.
    public var keyShare: [UInt8]
    /// The largest DATA payload this side accepts.
    public var maximumDataPayload: UInt32
    /// Empty for a new session; the id of the session to resume otherwise.
    public var resumeSessionID: [UInt8]
    /// The user the client authenticates as (`--user`); empty for the server's shared token.
    public var user: String

    /// The longest user name, in UTF-8 bytes (its length goes in one byte).
    public static let maximumUserLength = 64

    public init(
        version: UInt8,
        capabilities: Capabilities,
        nonce: [UInt8],
        keyShare: [UInt8],
        maximumDataPayload: UInt32,
        resumeSessionID: [UInt8] = [],
        user: String = ""
    ) {
        self.user = user
        self.version = version
        self.capabilities = capabilities
        self.nonce = nonce
        self.keyShare = keyShare
        self.maximumDataPayload = maximumDataPayload
        self.resumeSessionID = resumeSessionID
    }
}

/// The server's answer to HELLO: its version, capabilities, own fresh nonce and key share.
public struct Challenge: Hashable, Sendable {
    public var version: UInt8
    public var capabilities: Capabilities
    public var nonce: [UInt8]
    /// The server's ephemeral X25519 public key (32 bytes), fresh for this handshake.
    public var keyShare: [UInt8]
    public var maximumDataPayload: UInt32

    public init(
        version: UInt8,
        capabilities: Capabilities,
        nonce: [UInt8],
        keyShare: [UInt8],
        maximumDataPayload: UInt32
    ) {
        self.version = version
        self.capabilities = capabilities
        self.nonce = nonce
        self.keyShare = keyShare
        self.maximumDataPayload = maximumDataPayload
    }
}

/// The client's proof that it holds the token, bound to both nonces.
public struct Auth: Hashable, Sendable {
    /// HMAC-SHA256, 32 bytes.
    public var proof: [UInt8]
    /// Reliable frames the client has received in this session (0 for a new session).
    public var received: UInt64

    public init(proof: [UInt8], received: UInt64) {
        self.proof = proof
        self.received = received
    }
}

/// The server's acceptance: its own proof, the session id, and the agreed capabilities.
public struct Welcome: Hashable, Sendable {
    public var proof: [UInt8]
    /// 16 random bytes naming the session.
    public var sessionID: [UInt8]
    public var capabilities: Capabilities
    /// Reliable frames the server has received in this session (0 for a new session).
    public var received: UInt64

    public init(proof: [UInt8], sessionID: [UInt8], capabilities: Capabilities, received: UInt64) {
        self.proof = proof
        self.sessionID = sessionID
        self.capabilities = capabilities
        self.received = received
    }
}
