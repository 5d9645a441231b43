import Culvert
import CulvertCore
import CulvertTools
import CulvertTransport
import Foundation
import NIOCore
import NIOPosix
import Testing

/// `https://` servers: every transport inside TLS, directly and through a real forward proxy (CONNECT, so the proxy
/// sees only the CONNECT line); certificates checked against a CA file, by a pinned key, or not at all; wrong CA,
/// wrong pin, expired certificate and wrong name refused with a clear reason.
@Suite(.serialized, .timeLimit(.minutes(2))) struct TLSTests {
    /// A test PKI written to a temporary directory: a CA, a server certificate it signed for 127.0.0.1 and
    /// localhost, an expired one, and a second CA that signed nothing here.
    struct PKI {
        let directory: String
        var caFile: String { self.directory + "/ca.pem" }
        var otherCAFile: String { self.directory + "/other-ca.pem" }

        static func make() throws -> PKI {
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("culvert-tls-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let ca = try ServerTLS.makeSelfSigned(names: ["Culvert Test CA"], validFrom: Date(), days: 30, isCertificateAuthority: true)
            let otherCA = try ServerTLS.makeSelfSigned(names: ["Other CA"], validFrom: Date(), days: 30, isCertificateAuthority: true)
            let server = try ServerTLS.makeSelfSigned(names: ["localhost", "127.0.0.1"], validFrom: Date(), days: 30, issuer: ca)
            // For a name only: NIOSSL accepts a certificate for the connected IP address whatever the name.
            let named = try ServerTLS.makeSelfSigned(names: ["tunnel.test"], validFrom: Date(), days: 30, issuer: ca)
            let expired = try ServerTLS.makeSelfSigned(
                names: ["localhost", "127.0.0.1"], validFrom: Date().addingTimeInterval(-40 * 86400), days: 30, issuer: ca
            )
            let files = [
                "ca.pem": ca.certificatePEM, "other-ca.pem": otherCA.certificatePEM,
                "server.pem": server.certificatePEM, "server.key": server.keyPEM,
                "named.pem": named.certificatePEM, "named.key": named.keyPEM,
                "expired.pem": expired.certificatePEM, "expired.key": expired.keyPEM,
            ]
            for (name, text) in files { try text.write(toFile: directory + "/" + name, atomically: true, encoding: .utf8) }
            return PKI(directory: directory)
        }

        func serverTLS(expired: Bool = false, namedOnly: Bool = false) throws -> ServerTLS {
            let name = expired ? "expired" : namedOnly ? "named" : "server"
            return try ServerTLS(certificateFile: self.directory + "/\(name).pem", keyFile: self.directory + "/\(name).key")
        }
    }

    let group = TunnelHarness.group

    private func startServer(tls: ServerTLS, echoPort: Int) async throws -> TunnelServer {
        try await TunnelServer.start(
            configuration: .init(
                listenHost: "127.0.0.1", listenPort: 0, session: SessionConfiguration(token: "test-token"),
                allowlist: Allowlist(entries: [try Allowlist.Entry(parsing: "127.0.0.1:\(echoPort)")]), tls: tls
            ),
            group: self.group, logger: TunnelHarness.logger
        )
    }

    private func connect(
        serverPort: Int, echoPort: Int, transport: TransportKind, tls: ClientTLS, proxy: ProxyConfiguration? = nil
    ) async throws -> TunnelClient {
        try await TunnelClient.connect(
            configuration: .init(
                server: ServerEndpoint(host: "127.0.0.1", port: serverPort, usesTLS: true),
                transport: transport,
                transportOptions: TransportOptions(connectTimeout: .seconds(5), proxy: proxy, tls: tls, logger: TunnelHarness.logger),
                session: SessionConfiguration(token: "test-token"),
                forwards: [ForwardSpec(bindPort: 0, target: .init(host: "127.0.0.1", port: echoPort))]
            ),
            group: self.group, logger: TunnelHarness.logger
        )
    }

    @Test(arguments: TransportKind.allCases, [false, true])
    func everyTransportRunsInsideTLSDirectlyAndThroughAProxy(transport: TransportKind, throughProxy: Bool) async throws {
        let pki = try PKI.make()
        defer { try? FileManager.default.removeItem(atPath: pki.directory) }
        let echo = try await EchoServer.start(group: self.group)
        let server = try await self.startServer(tls: try pki.serverTLS(), echoPort: echo.port)
        let tinyproxy = throughProxy ? try await startTinyproxy() : nil
        defer { tinyproxy?.stop() }
        let client = try await self.connect(
            serverPort: server.localAddress!.port!, echoPort: echo.port, transport: transport,
            tls: try ClientTLS(verification: .certificateAuthorities(file: pki.caFile)),
            proxy: tinyproxy.map { ProxyConfiguration(host: "127.0.0.1", port: $0.port) }
        )
        try await self.expectIntactEcho(through: client, byteCount: 2 << 20)
        if let tinyproxy {
            // The proxy saw CONNECT lines only, never a request path of the tunnel.
            let log = tinyproxy.log
            #expect(log.contains("CONNECT"))
            #expect(!log.contains("/culvert/"))
        }
        await client.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }

    @Test func aCertificateFromAnotherCAIsRefused() async throws {
        try await self.expectRefusal(verification: { pki in .certificateAuthorities(file: pki.otherCAFile) }, containing: "not trusted")
    }

    @Test func anExpiredCertificateIsRefused() async throws {
        try await self.expectRefusal(expired: true, verification: { pki in .certificateAuthorities(file: pki.caFile) }, containing: "not trusted")
    }

    @Test func aCertificateForAnotherNameIsRefused() async throws {
        // Certificate for tunnel.test; the client asks for elsewhere.test, then for the bare address.
        for serverName in ["elsewhere.test", nil] {
            try await self.expectRefusal(
                namedOnly: true, verification: { pki in .certificateAuthorities(file: pki.caFile) }, serverName: serverName,
                containing: "not for this name"
            )
        }
    }

    /// A pin that is not the server's key is refused over every transport, with both keys shown and the likely
    /// cause (a TLS-inspecting proxy) named, not "not trusted".
    @Test func aWrongPinIsRefusedShowingBothKeysAndTheLikelyCause() async throws {
        let wrongPin = PublicKeyPin(digest: Array(repeating: 7, count: 32))
        try await self.expectRefusal(verification: { _ in .pinned(wrongPin) }, containing: "does not match --tls-pin \(wrongPin)")
        try await self.expectRefusal(verification: { _ in .pinned(wrongPin) }, containing: "TLS-inspecting proxy")
        try await self.expectRefusal(verification: { _ in .pinned(wrongPin) }, containing: "the server's key sha256:")
    }

    /// A self-signed server created on first start and reused on the next, trusted by its printed pin; `--insecure`
    /// gets through too; a name in SNI other than the URL's host is what the certificate is checked against.
    @Test func selfSignedServerIsTrustedByItsPinAndKeepsItsKey() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("culvert-selfsigned-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let first = try ServerTLS.selfSigned(directory: directory, names: ["localhost", "127.0.0.1"])
        let second = try ServerTLS.selfSigned(directory: directory, names: ["localhost", "127.0.0.1"])
        #expect(first.pin == second.pin)
        let echo = try await EchoServer.start(group: self.group)
        let server = try await self.startServer(tls: second, echoPort: echo.port)
        for tls in [try ClientTLS(verification: .pinned(first.pin)), try ClientTLS(verification: .none)] {
            let client = try await self.connect(serverPort: server.localAddress!.port!, echoPort: echo.port, transport: .websocket, tls: tls)
            try await self.expectIntactEcho(through: client, byteCount: 1024 * 1024)
            await client.shutdown(gracePeriod: .zero)
        }
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }

    @Test func sniNameIsCheckedInsteadOfTheURLHost() async throws {
        let pki = try PKI.make()
        defer { try? FileManager.default.removeItem(atPath: pki.directory) }
        let echo = try await EchoServer.start(group: self.group)
        let server = try await self.startServer(tls: try pki.serverTLS(namedOnly: true), echoPort: echo.port)
        let client = try await self.connect(
            serverPort: server.localAddress!.port!, echoPort: echo.port, transport: .chunked,
            tls: try ClientTLS(verification: .certificateAuthorities(file: pki.caFile), serverName: "tunnel.test")
        )
        try await self.expectIntactEcho(through: client, byteCount: 1024 * 1024)
        await client.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }

    /// Sends `byteCount` bytes to the echo target through the client's first forward and checks, by sha256, that all
    /// of them came back intact.
    private func expectIntactEcho(through client: TunnelClient, byteCount: Int) async throws {
        let transfer = try await TransferClient.echoTransfer(
            host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: byteCount, seed: 11, group: self.group
        )
        #expect(transfer.digestsMatch)
        #expect(transfer.bytesReceived == byteCount)
    }

    private func expectRefusal(
        expired: Bool = false,
        namedOnly: Bool = false,
        verification: (PKI) throws -> ClientTLS.Verification,
        serverName: String? = nil,
        containing words: String
    ) async throws {
        let pki = try PKI.make()
        defer { try? FileManager.default.removeItem(atPath: pki.directory) }
        let echo = try await EchoServer.start(group: self.group)
        let server = try await self.startServer(tls: try pki.serverTLS(expired: expired, namedOnly: namedOnly), echoPort: echo.port)
        let tls = try ClientTLS(verification: try verification(pki), serverName: serverName)
        for transport in TransportKind.allCases {
            do {
                let client = try await self.connect(serverPort: server.localAddress!.port!, echoPort: echo.port, transport: transport, tls: tls)
                await client.shutdown(gracePeriod: .zero)
                Issue.record("\(transport): connected despite the bad certificate")
            } catch {
                #expect("\(error)".contains(words), "\(transport): \(error)")
                #expect("\(error)".contains("TLS"), "\(transport): \(error)")
            }
        }
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }

    /// The self-signed key is created readable by its owner only (0600, never wider for a moment) in a directory
    /// that is 0700, parents included.
    @Test func selfSignedKeyAndDirectoryArePrivate() throws {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("culvert-tls-\(UInt32.random(in: 0...UInt32.max))").path
        defer { try? FileManager.default.removeItem(atPath: base) }
        let directory = base + "/nested/tls"
        _ = try ServerTLS.selfSigned(directory: directory, names: ["localhost"])
        func mode(_ path: String) throws -> Int {
            try (FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int) ?? -1
        }
        #expect(try mode(directory + "/key.pem") == 0o600)
        #expect(try mode(directory) == 0o700)
        #expect(try mode(base + "/nested") == 0o700)
    }
}
