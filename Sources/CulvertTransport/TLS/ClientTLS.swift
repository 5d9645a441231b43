import Foundation
import Logging
import NIOCore
import NIOSSL
import SwiftASN1
import X509

/// How the client checks the server's certificate on `https://` and `wss://` URLs: against the system's trust store
/// (default) or the CAs in a file, by a pinned public key, or not at all (`--insecure`), with SNI set apart from the
/// URL's host when asked. Built once (loading trust roots is not free) and shared by every connection.
public struct ClientTLS: Sendable {
    /// What to trust.
    public enum Verification: Sendable, Hashable {
        /// A chain to the system's trust roots, and the server's name.
        case systemTrustRoots
        /// A chain to the CA certificates in this PEM file, and the server's name.
        case certificateAuthorities(file: String)
        /// The server's leaf certificate carries this public key and is within its validity period; no chain, no name.
        case pinned(PublicKeyPin)
        /// Nothing: encrypted but not authenticated.
        case none
    }

    /// Checks against the system's trust roots, with SNI from the URL: what `https://` means without options.
    public static let systemDefault: ClientTLS = {
        do { return try ClientTLS() } catch { fatalError("TLS cannot be set up on this system: \(error)") }
    }()

    public let verification: Verification
    /// The name sent in SNI and checked against the certificate; nil: the URL's host.
    public let serverName: String?
    let context: NIOSSLContext

    public init(verification: Verification = .systemTrustRoots, serverName: String? = nil) throws(TransportError) {
        self.verification = verification
        self.serverName = serverName
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        switch verification {
        case .systemTrustRoots:
            break
        case .certificateAuthorities(let file):
            guard FileManager.default.isReadableFile(atPath: file) else {
                throw TransportError.invalidTLSSetting("--tls-ca \(file): no such readable file")
            }
            configuration.trustRoots = .file(file)
        case .pinned:
            // The verification callback checks the pin instead of a chain (NIOSSL calls it only when verification
            // is on; a callback replaces the chain check).
            configuration.certificateVerification = .noHostnameVerification
        case .none:
            configuration.certificateVerification = .none
        }
        do {
            self.context = try NIOSSLContext(configuration: configuration)
        } catch {
            throw TransportError.invalidTLSSetting("cannot set up TLS: \(error)")
        }
    }

    /// The TLS handler for a connection to `endpoint`, and for a pinned key the record of what the check saw.
    func makeHandler(for endpoint: ServerEndpoint) throws -> (NIOSSLClientHandler, PinnedKeyCheck?) {
        let name = self.serverName ?? endpoint.host
        // SNI carries names only: for an IP address the certificate's IP entries are checked instead.
        let hostname = Self.isIPAddress(name) ? nil : name
        switch self.verification {
        case .pinned(let pin):
            let check = PinnedKeyCheck(expected: pin)
            let handler = try NIOSSLClientHandler(context: self.context, serverHostname: hostname) { certificates, promise in
                promise.succeed(Self.verify(check, certificates: certificates))
            }
            return (handler, check)
        case .systemTrustRoots, .certificateAuthorities, .none:
            return (try NIOSSLClientHandler(context: self.context, serverHostname: hostname), nil)
        }
    }

    private static func verify(_ check: PinnedKeyCheck, certificates: [NIOSSLCertificate]) -> NIOSSLVerificationResult {
        guard let leaf = certificates.first, let leafPin = try? PublicKeyPin(certificate: leaf) else { return .failed }
        check.presented = leafPin
        guard leafPin == check.expected, let certificate = try? Certificate(derEncoded: leaf.toDERBytes()) else {
            return .failed
        }
        let now = Date()
        return certificate.notValidBefore <= now && now <= certificate.notValidAfter ? .certificateVerified : .failed
    }

    static func isIPAddress(_ host: String) -> Bool {
        (try? SocketAddress(ipAddress: host, port: 0)) != nil
    }
}
