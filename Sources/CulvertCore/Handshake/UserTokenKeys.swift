import Crypto

/// A named user's keys, derived from their token as SCRAM (RFC 5802) derives them from a salted password: the
/// client key, which only the token's holder can compute, and the verifier a server keeps.
///
/// The derivation is HKDF-SHA256 rather than PBKDF2: tokens are random secrets (`culvert hash-token --generate`
/// makes one), not passwords a person chose, so stretching would slow every reload of a large users file and add
/// nothing against guessing.
public struct UserTokenKeys: Sendable {
    /// Proves the client holds the token; never sent as such (the proof is it XOR a signature).
    public let clientKey: [UInt8]
    public let verifier: TokenVerifier

    public init(token: String) {
        let salted = HKDF<SHA256>.deriveKey(
            inputKeyMaterial: SymmetricKey(data: Array(token.utf8)),
            salt: Array("culvert v1 user token".utf8),
            info: [],
            outputByteCount: 32
        )
        let clientKey = Array(HMAC<SHA256>.authenticationCode(for: Array("culvert v1 client key".utf8), using: salted))
        let serverKey = Array(HMAC<SHA256>.authenticationCode(for: Array("culvert v1 server key".utf8), using: salted))
        self.clientKey = clientKey
        self.verifier = TokenVerifier(storedKey: Array(SHA256.hash(data: clientKey)), serverKey: serverKey)
    }

    /// The client's proof over `transcript`: the client key XOR a signature only the key's verifier can make.
    public func clientProof(transcript: [UInt8]) -> [UInt8] {
        let signature = HandshakeKeys.userClientSignature(storedKey: self.verifier.storedKey, transcript: transcript)
        return zip(self.clientKey, signature).map { $0 ^ $1 }
    }
}
