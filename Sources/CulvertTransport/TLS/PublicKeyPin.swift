import Crypto
import Foundation
public import NIOSSL

/// A pinned server public key: the SHA-256 of its SubjectPublicKeyInfo, written `sha256:BASE64` (as HPKP did and
/// as `culvert server --tls-self-signed` prints it). A pin trusts that key whatever certificate carries it, which is
/// what a self-signed server needs.
public struct PublicKeyPin: Sendable, Hashable, CustomStringConvertible {
    public let digest: [UInt8]

    public init(digest: [UInt8]) {
        self.digest = digest
    }

    /// Parses `sha256:BASE64`.
    public init(parsing text: String) throws(TransportError) {
        guard text.hasPrefix("sha256:"), let data = Data(base64Encoded: String(text.dropFirst("sha256:".count))), data.count == 32 else {
            throw TransportError.invalidTLSSetting("--tls-pin '\(text)' must be sha256: and the base64 of 32 bytes (as the server prints it)")
        }
        self.digest = Array(data)
    }

    /// The pin of `certificate`'s public key.
    public init(certificate: NIOSSLCertificate) throws {
        let spki = try certificate.extractPublicKey().toSPKIBytes()
        self.digest = Array(SHA256.hash(data: spki))
    }

    public var description: String { "sha256:" + Data(self.digest).base64EncodedString() }
}
