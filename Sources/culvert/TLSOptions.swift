import ArgumentParser
import CulvertTransport
import Foundation
import Logging

/// The client's TLS options, for `https://` and `wss://` server URLs.
struct ClientTLSOptions: ParsableArguments {
    @Option(help: "Trust the CA certificates in this PEM file instead of the system's.")
    var tlsCa: String?

    @Option(help: "Trust the server whose public key has this pin, sha256:BASE64 (as `culvert server --tls-self-signed` prints it).")
    var tlsPin: String?

    @Flag(help: "Do not check the server's certificate at all (encrypted, but anyone in the path can pose as the server).")
    var insecure = false

    @Option(help: "Name to send in SNI and check the certificate against, instead of the URL's host.")
    var sni: String?

    /// The TLS setup these options ask for; nil when none is given (the system's trust roots then apply).
    func resolve(for server: ServerEndpoint, logger: Logger) throws -> ClientTLS? {
        let given = [self.tlsCa != nil, self.tlsPin != nil, self.insecure].filter { $0 }.count
        guard given <= 1 else { throw ValidationError("give at most one of --tls-ca, --tls-pin and --insecure") }
        guard given > 0 || self.sni != nil else { return nil }
        if !server.usesTLS { logger.warning("TLS options are ignored for \(server): use an https:// URL for TLS") }
        let verification: ClientTLS.Verification
        if let file = self.tlsCa {
            verification = .certificateAuthorities(file: file)
        } else if let pin = self.tlsPin {
            do { verification = .pinned(try PublicKeyPin(parsing: pin)) } catch { throw ValidationError(error.description) }
        } else if self.insecure {
            logger.warning("--insecure: the server's certificate is NOT checked; anyone in the path can read and change the tunnel's traffic")
            verification = .none
        } else {
            verification = .systemTrustRoots
        }
        do { return try ClientTLS(verification: verification, serverName: self.sni) } catch { throw ValidationError(error.description) }
    }
}

/// The server's TLS options.
struct ServerTLSOptions: ParsableArguments {
    @Option(help: "Serve HTTPS and WSS with this PEM certificate (chain, leaf first); needs --tls-key.")
    var tlsCert: String?

    @Option(help: "The PEM private key of --tls-cert.")
    var tlsKey: String?

    @Flag(help: "Serve HTTPS with a self-signed certificate, created on first start in --tls-dir and reused; prints the pin clients pass as --tls-pin.")
    var tlsSelfSigned = false

    @Option(help: "Directory of the self-signed certificate (default: $XDG_DATA_HOME/culvert/tls or ~/.local/share/culvert/tls).")
    var tlsDir: String?

    /// The TLS identity, or nil for plain HTTP; `listenHost` and the machine's name go into a new self-signed
    /// certificate.
    func resolve(listenHost: String, logger: Logger) throws -> ServerTLS? {
        if self.tlsSelfSigned {
            guard self.tlsCert == nil && self.tlsKey == nil else {
                throw ValidationError("--tls-self-signed and --tls-cert/--tls-key contradict each other")
            }
            let directory = self.tlsDir ?? Self.defaultDirectory()
            var names = ["localhost", "127.0.0.1", "::1", ProcessInfo.processInfo.hostName]
            if !["0.0.0.0", "::", "*"].contains(listenHost) && !names.contains(listenHost) { names.append(listenHost) }
            do {
                let tls = try ServerTLS.selfSigned(directory: directory, names: names)
                logger.notice("TLS with the self-signed certificate in \(directory); clients pass --tls-pin \(tls.pin)")
                return tls
            } catch {
                throw ValidationError(error.description)
            }
        }
        switch (self.tlsCert, self.tlsKey) {
        case (nil, nil):
            return nil
        case (let certificate?, let key?):
            do {
                let tls = try ServerTLS(certificateFile: certificate, keyFile: key)
                logger.info("TLS with \(certificate) (key pin \(tls.pin))")
                return tls
            } catch {
                throw ValidationError(error.description)
            }
        default:
            throw ValidationError("--tls-cert and --tls-key go together")
        }
    }

    private static func defaultDirectory() -> String {
        let environment = ProcessInfo.processInfo.environment
        if let data = environment["XDG_DATA_HOME"], !data.isEmpty { return data + "/culvert/tls" }
        return (environment["HOME"] ?? ".") + "/.local/share/culvert/tls"
    }
}
