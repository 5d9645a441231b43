/// The two AES-256-GCM keys of one attachment of a session (the initial handshake or one resumption), one per
/// direction; ``HandshakeKeys/sealingKeys(sharedSecret:sessionKey:transcript:)`` derives them.
public struct SealingKeys: Hashable, Sendable {
    public var clientToServer: [UInt8]
    public var serverToClient: [UInt8]

    public init(clientToServer: [UInt8], serverToClient: [UInt8]) {
        self.clientToServer = clientToServer
        self.serverToClient = serverToClient
    }
}
