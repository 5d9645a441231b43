import Crypto
public import Foundation
#if canImport(Glibc)
import Glibc
#endif
import NIOCore
import NIOSSL
import SwiftASN1
import X509

/// The server's TLS identity: a certificate chain and key from PEM files, or a self-signed pair created on first start
/// in a directory and reused later. `pin` is what clients give as `--tls-pin` to trust a self-signed server.
public struct ServerTLS: Sendable {
    let context: NIOSSLContext
    /// The pin of the certificate's public key.
    public let pin: PublicKeyPin
    /// Where the certificate came from, for logs.
    public let source: String

    /// Loads `certificateFile` (PEM, leaf first) and `keyFile` (PEM).
    public init(certificateFile: String, keyFile: String) throws(TransportError) {
        let chain: [NIOSSLCertificate]
        let key: NIOSSLPrivateKey
        do {
            chain = try NIOSSLCertificate.fromPEMFile(certificateFile)
        } catch {
            throw TransportError.invalidTLSSetting("--tls-cert \(certificateFile): cannot read a PEM certificate (\(error))")
        }
        do {
            key = try NIOSSLPrivateKey(file: keyFile, format: .pem)
        } catch {
            throw TransportError.invalidTLSSetting("--tls-key \(keyFile): cannot read a PEM private key (\(error))")
        }
        guard let leaf = chain.first else {
            throw TransportError.invalidTLSSetting("--tls-cert \(certificateFile): no certificate in it")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key)
        )
        configuration.minimumTLSVersion = .tlsv12
        do {
            self.context = try NIOSSLContext(configuration: configuration)
            self.pin = try PublicKeyPin(certificate: leaf)
        } catch {
            throw TransportError.invalidTLSSetting("--tls-cert/--tls-key: \(error) (does the key belong to the certificate?)")
        }
        self.source = certificateFile
    }

    /// The self-signed identity kept in `directory` (`cert.pem`, `key.pem`), created there on first use for `names`
    /// (DNS names and IP addresses), valid for ten years.
    public static func selfSigned(directory: String, names: [String]) throws(TransportError) -> ServerTLS {
        let certificateFile = directory + "/cert.pem", keyFile = directory + "/key.pem"
        let files = FileManager.default
        if !files.fileExists(atPath: certificateFile) || !files.fileExists(atPath: keyFile) {
            do {
                try Self.makePrivateDirectory(directory)
                let (certificatePEM, keyPEM) = try Self.makeSelfSigned(names: names, validFrom: Date(), days: 3650)
                try Self.writePrivateFile(keyFile, contents: keyPEM)
                try Data(certificatePEM.utf8).write(to: URL(fileURLWithPath: certificateFile))
            } catch {
                throw TransportError.invalidTLSSetting("cannot create a self-signed certificate in \(directory): \(error)")
            }
        }
        return try ServerTLS(certificateFile: certificateFile, keyFile: keyFile)
    }

    /// Creates `path` and any missing parent as 0700 from the start (never readable by others, not even for a moment).
    static func makePrivateDirectory(_ path: String) throws {
        var current = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            current += "/" + component
            if mkdir(current, 0o700) != 0 && errno != EEXIST {
                throw TLSFileError(path: current, operation: "create the directory", code: errno)
            }
        }
    }

    /// Writes a new file created as 0600, so a key is never on disk with wider permissions; fails if it exists.
    static func writePrivateFile(_ path: String, contents: String) throws {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard descriptor >= 0 else { throw TLSFileError(path: path, operation: "create", code: errno) }
        defer { close(descriptor) }
        let bytes = Array(contents.utf8)
        var written = 0
        while written < bytes.count {
            let result = bytes[written...].withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
            guard result > 0 else { throw TLSFileError(path: path, operation: "write", code: errno) }
            written += result
        }
    }

    /// A self-signed certificate and its P-256 key, as PEM, for `names`; `issuer` signs it when given (a CA, for
    /// tests), else it signs itself.
    public static func makeSelfSigned(
        names: [String],
        validFrom: Date,
        days: Int,
        issuer: (certificatePEM: String, keyPEM: String)? = nil,
        isCertificateAuthority: Bool = false
    ) throws -> (certificatePEM: String, keyPEM: String) {
        let key = P256.Signing.PrivateKey()
        let subject = try DistinguishedName { CommonName(names.first ?? "culvert") }
        var alternativeNames: [GeneralName] = []
        for name in names {
            if let address = try? SocketAddress(ipAddress: name, port: 0) {
                switch address {
                // The address bytes of sockaddr_in (from offset 4) and sockaddr_in6 (from offset 8), in network order.
                case .v4(let v4): alternativeNames.append(.ipAddress(ASN1OctetString(contentBytes: withUnsafeBytes(of: v4.address) { Array($0)[4..<8] })))
                case .v6(let v6): alternativeNames.append(.ipAddress(ASN1OctetString(contentBytes: withUnsafeBytes(of: v6.address) { Array($0)[8..<24] })))
                default: break
                }
            } else {
                alternativeNames.append(.dnsName(name))
            }
        }
        let extensions = try Certificate.Extensions {
            Critical(isCertificateAuthority ? BasicConstraints.isCertificateAuthority(maxPathLength: nil) : BasicConstraints.notCertificateAuthority)
            if isCertificateAuthority {
                KeyUsage(keyCertSign: true)
            } else {
                KeyUsage(digitalSignature: true)
                try ExtendedKeyUsage([.serverAuth])
                SubjectAlternativeNames(alternativeNames)
            }
        }
        let issuerName: DistinguishedName
        let signingKey: Certificate.PrivateKey
        if let issuer {
            let issuerCertificate = try Certificate(pemEncoded: issuer.certificatePEM)
            issuerName = issuerCertificate.subject
            signingKey = try Certificate.PrivateKey(pemEncoded: issuer.keyPEM)
        } else {
            issuerName = subject
            signingKey = Certificate.PrivateKey(key)
        }
        let certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: Certificate.PublicKey(key.publicKey),
            notValidBefore: validFrom.addingTimeInterval(-300),
            notValidAfter: validFrom.addingTimeInterval(Double(days) * 86400),
            issuer: issuerName,
            subject: subject,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: extensions,
            issuerPrivateKey: signingKey
        )
        return (try certificate.serializeAsPEM().pemString, key.pemRepresentation)
    }
}

/// A file or directory of the TLS identity could not be made.
struct TLSFileError: Error, CustomStringConvertible {
    let path: String
    let operation: String
    let code: Int32

    var description: String { "cannot \(self.operation) \(self.path): \(String(cString: strerror(self.code)))" }
}
