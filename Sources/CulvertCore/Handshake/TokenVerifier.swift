import Crypto

/// What a server needs to check a named user's token without holding it: the stored key and the server key of the
/// salted challenge–response scheme SCRAM (RFC 5802) uses, derived from the token.
///
/// A users file may hold this instead of the token (`token-hash`, as `culvert hash-token` prints it). Whoever reads
/// the file can check proofs and could act as the server, but cannot make a client's proof: that needs the client
/// key, of which the file holds only a hash.
public struct TokenVerifier: Hashable, Sendable {
    /// SHA-256 of the client key.
    public let storedKey: [UInt8]
    /// Makes the server's proof.
    public let serverKey: [UInt8]

    /// The text form's prefix: it names the derivation, so a later one can be told apart.
    public static let hashPrefix = "culvert-v1:"

    public init(storedKey: [UInt8], serverKey: [UInt8]) {
        self.storedKey = storedKey
        self.serverKey = serverKey
    }

    /// The verifier of `token`.
    public init(token: String) {
        self = UserTokenKeys(token: token).verifier
    }

    /// Parses the text `hashText` prints; nil when it is not one.
    public init?(hashText: String) {
        guard hashText.hasPrefix(Self.hashPrefix) else { return nil }
        let hex = Array(hashText.utf8.dropFirst(Self.hashPrefix.utf8.count))
        guard hex.count == 128 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(64)
        var index = 0
        while index < hex.count {
            guard let high = Self.hexValue(hex[index]), let low = Self.hexValue(hex[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        self.init(storedKey: Array(bytes[0..<32]), serverKey: Array(bytes[32..<64]))
    }

    /// `culvert-v1:` and the two keys in lower-case hex: what a users file's `token-hash` holds.
    public var hashText: String {
        Self.hashPrefix + (self.storedKey + self.serverKey).lowercaseHex
    }

    /// Whether `proof` is the client's proof over `transcript`, and if so the client key it carries (which the
    /// session key is made from).
    ///
    /// The work done is the same whether or not the proof verifies, so a verifier made up for an unknown user
    /// takes as long to refuse as a real one.
    public func clientKey(fromProof proof: [UInt8], transcript: [UInt8]) -> [UInt8]? {
        let signature = HandshakeKeys.userClientSignature(storedKey: self.storedKey, transcript: transcript)
        guard proof.count == signature.count else { return nil }
        let clientKey = zip(proof, signature).map { $0 ^ $1 }
        let matches = HandshakeKeys.proofsMatch(Array(SHA256.hash(data: clientKey)), self.storedKey)
        return matches ? clientKey : nil
    }

    private static func hexValue(_ character: UInt8) -> UInt8? {
        switch character {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): character - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): character - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): character - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
