import Crypto

/// The HMAC-SHA256 computations of the handshake.
///
/// The token never crosses the wire: each side proves it holds the token by a MAC over the transcript (HELLO and
/// CHALLENGE payloads, which carry a fresh nonce from each side), so a recorded proof is useless in a later
/// handshake. The session key, derived the same way, proves ownership of a session when it is resumed.
public struct HandshakeKeys: Sendable {
    private let key: SymmetricKey

    /// - Parameter token: the shared secret; `nil` (authentication off) uses an empty key.
    public init(token: String?) {
        self.key = SymmetricKey(data: Array((token ?? "").utf8))
    }

    /// Keys for resuming a session: the proofs are made with the session key instead of the token.
    public init(sessionKey: [UInt8]) {
        self.key = SymmetricKey(data: sessionKey)
    }

    /// The client's proof, when resuming, that it holds the session key.
    public func clientResumeProof(transcript: [UInt8]) -> [UInt8] {
        Self.mac(self.key, label: "culvert v1 resume client proof", transcript)
    }

    /// The server's proof, when resuming, that it holds the session key.
    public func serverResumeProof(transcript: [UInt8], sessionID: [UInt8]) -> [UInt8] {
        Self.mac(self.key, label: "culvert v1 resume server proof", transcript + sessionID)
    }

    /// The client's proof over the transcript.
    public func clientProof(transcript: [UInt8]) -> [UInt8] {
        Self.mac(self.key, label: "culvert v1 client proof", transcript)
    }

    /// The server's proof over the transcript and the session id it assigns.
    public func serverProof(transcript: [UInt8], sessionID: [UInt8]) -> [UInt8] {
        Self.mac(self.key, label: "culvert v1 server proof", transcript + sessionID)
    }

    /// The key that later proves ownership of the session.
    public func sessionKey(transcript: [UInt8]) -> [UInt8] {
        Self.mac(self.key, label: "culvert v1 session key", transcript)
    }

    /// A named user's client signature: HMAC-SHA256 under the stored key, which the proof XORs with the client key.
    static func userClientSignature(storedKey: [UInt8], transcript: [UInt8]) -> [UInt8] {
        Self.mac(SymmetricKey(data: storedKey), label: "culvert v1 user client proof", transcript)
    }

    /// The server's proof to a named user, made with the user's server key.
    public static func userServerProof(serverKey: [UInt8], transcript: [UInt8], sessionID: [UInt8]) -> [UInt8] {
        Self.mac(SymmetricKey(data: serverKey), label: "culvert v1 user server proof", transcript + sessionID)
    }

    /// A named user's session key, made with the client key (which the server recovers from the proof).
    public static func userSessionKey(clientKey: [UInt8], transcript: [UInt8]) -> [UInt8] {
        Self.mac(SymmetricKey(data: clientKey), label: "culvert v1 user session key", transcript)
    }

    /// Compares a received proof with the expected one in constant time.
    public static func proofsMatch(_ received: [UInt8], _ expected: [UInt8]) -> Bool {
        guard received.count == expected.count else { return false }
        var difference: UInt8 = 0
        for index in received.indices {
            difference |= received[index] ^ expected[index]
        }
        return difference == 0
    }

    /// The transcript that both proofs cover: the exact HELLO and CHALLENGE payload fields, in order.
    public static func transcript(hello: Hello, challenge: Challenge) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.append(hello.version)
        bytes.append(contentsOf: hello.capabilities.rawValue.bigEndianBytes)
        bytes.append(contentsOf: hello.nonce)
        bytes.append(contentsOf: hello.keyShare)
        bytes.append(contentsOf: hello.maximumDataPayload.bigEndianBytes)
        bytes.append(UInt8(hello.resumeSessionID.count))
        bytes.append(contentsOf: hello.resumeSessionID)
        if !hello.user.isEmpty {
            bytes.append(UInt8(hello.user.utf8.count))
            bytes.append(contentsOf: hello.user.utf8)
        }
        bytes.append(challenge.version)
        bytes.append(contentsOf: challenge.capabilities.rawValue.bigEndianBytes)
        bytes.append(contentsOf: challenge.nonce)
        bytes.append(contentsOf: challenge.keyShare)
        bytes.append(contentsOf: challenge.maximumDataPayload.bigEndianBytes)
        return bytes
    }

    /// The keys that seal this attachment's frames (``SessionCipher``): HKDF-SHA256 with the session key as salt
    /// over the X25519 secret of the two key shares, expanded once per direction with the transcript's hash.
    ///
    /// The key shares are fresh in every handshake, a resumption's too, so every attachment has keys of its own
    /// (its frame counters can start at 0 without a nonce ever repeating under a key), and a recorded session
    /// cannot be read later even with the token: the X25519 secrets are gone. The session key, which only holders
    /// of the token (or the session) can make, keeps a hop that swapped the key shares from deriving them; the
    /// proofs, which cover the key shares in the transcript, make sure the handshake fails first.
    public static func sealingKeys(sharedSecret: [UInt8], sessionKey: [UInt8], transcript: [UInt8]) -> SealingKeys {
        let pseudoRandomKey = HKDF<SHA256>.extract(inputKeyMaterial: SymmetricKey(data: sharedSecret), salt: sessionKey)
        let transcriptHash = Array(SHA256.hash(data: transcript))
        func expand(_ label: String) -> [UInt8] {
            let key = HKDF<SHA256>.expand(pseudoRandomKey: pseudoRandomKey, info: Array(label.utf8) + transcriptHash, outputByteCount: 32)
            return key.withUnsafeBytes { Array($0) }
        }
        return SealingKeys(
            clientToServer: expand("culvert v2 seal client to server"),
            serverToClient: expand("culvert v2 seal server to client")
        )
    }

    private static func mac(_ key: SymmetricKey, label: String, _ data: [UInt8]) -> [UInt8] {
        var hmac = HMAC<SHA256>(key: key)
        hmac.update(data: Array(label.utf8))
        hmac.update(data: data)
        return Array(hmac.finalize())
    }
}

extension FixedWidthInteger {
    var bigEndianBytes: [UInt8] {
        withUnsafeBytes(of: self.bigEndian) { Array($0) }
    }
}
