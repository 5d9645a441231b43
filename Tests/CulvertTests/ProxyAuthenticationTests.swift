import Culvert
import CulvertTools
import CulvertTransport
import Foundation
import NIOCore
import NIOPosix
import Testing

/// squid from Debian demanding proxy authentication, checked by its own helpers (basic_ncsa_auth against an
/// htpasswd file, digest_file_auth against a password file): right, wrong and missing credentials over every
/// transport squid lets through, a Digest nonce that goes stale mid-session, and the command line's view of it.
@Suite(.serialized, .timeLimit(.minutes(3))) struct ProxyAuthenticationTests {
    let group = TunnelHarness.group

    enum Scheme: String, CaseIterable, Sendable {
        case basic, digest

        var name: String { self == .basic ? "Basic" : "Digest" }
        /// alice's password is `s3cret`: as an htpasswd line (`openssl passwd -apr1 -salt culvert s3cret`) for
        /// basic_ncsa_auth, in the clear for digest_file_auth.
        var passwords: String { self == .basic ? "alice:$apr1$culvert$onBpL9Wty4TBYsW3sCy6T/\n" : "alice:s3cret\n" }
    }

    /// The transports squid lets through (docs/compatibility.md): CONNECT only goes to port 443.
    static let transports: [TransportKind] = [.websocket, .chunked, .polling]

    static func startSquid(_ scheme: Scheme) async throws -> RealProxy {
        try await RealProxy.start(
            .squid, configuration: fixturesDirectory() + "/proxies/squid-forward-\(scheme.rawValue).conf",
            files: ["passwords": scheme.passwords]
        )
    }

    private func connectError(transport: TransportKind, proxy: ProxyConfiguration, serverPort: Int) async -> TransportError? {
        await TunnelHarness.transportError(connecting: transport, proxy: proxy, serverPort: serverPort)
    }

    @Test(arguments: Scheme.allCases)
    func rightCredentialsCarryDataAndWrongOrMissingOnesAreReportedOverEveryTransportSquidPasses(scheme: Scheme) async throws {
        let squid = try await Self.startSquid(scheme)
        defer { squid.stop() }
        let echo = try await EchoServer.start(group: self.group)
        let server = try await TunnelHarness.startServer(allow: ["127.0.0.1:\(echo.port)"])
        let port = server.localAddress!.port!
        let proxyName = "http://127.0.0.1:\(squid.port)"
        for transport in Self.transports {
            let missing = await self.connectError(transport: transport, proxy: ProxyConfiguration(host: "127.0.0.1", port: squid.port), serverPort: port)
            #expect(missing == .proxyAuthenticationRequired(proxy: proxyName, scheme: scheme.name, credentialsSent: false), "\(transport)")
            let wrong = await self.connectError(
                transport: transport, proxy: ProxyConfiguration(host: "127.0.0.1", port: squid.port, username: "alice", password: "nope"),
                serverPort: port
            )
            #expect(wrong == .proxyAuthenticationRequired(proxy: proxyName, scheme: scheme.name, credentialsSent: true), "\(transport)")

            let proxy = ProxyConfiguration(host: "127.0.0.1", port: squid.port, username: "alice", password: "s3cret")
            let client = try await TunnelHarness.connectClient(serverPort: port, targets: [echo.port], transport: transport, proxy: proxy)
            let result = try await TransferClient.echoTransfer(
                host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: 256 * 1024, group: self.group
            )
            #expect(result.digestsMatch, "\(scheme) \(transport)")
            #expect(proxy.authenticator?.schemeName == scheme.name)
            let resumptions = try await client.session.snapshot().resumptions
            #expect(client.sessionsStarted == 1 && resumptions == 0, "\(scheme) \(transport): the tunnel broke")
            await client.shutdown(gracePeriod: .zero)
        }
        #expect(!squid.log.contains("s3cret"))
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }

    /// squid here retires a Digest nonce after five uses (`nonce_max_count 5`): a polling session makes hundreds of
    /// requests, and each stale nonce is answered on the spot, so the session never notices.
    @Test func aDigestNonceGoingStaleMidSessionIsAnsweredWithoutBreakingTheTunnel() async throws {
        let squid = try await Self.startSquid(.digest)
        defer { squid.stop() }
        let echo = try await EchoServer.start(group: self.group)
        let server = try await TunnelHarness.startServer(allow: ["127.0.0.1:\(echo.port)"])
        let proxy = ProxyConfiguration(host: "127.0.0.1", port: squid.port, username: "alice", password: "s3cret")
        let client = try await TunnelHarness.connectClient(
            serverPort: server.localAddress!.port!, targets: [echo.port], transport: .polling, proxy: proxy
        )
        let result = try await TransferClient.echoTransfer(
            host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: 512 * 1024, group: self.group
        )
        #expect(result.digestsMatch)
        let resumptions = try await client.session.snapshot().resumptions
        #expect(client.sessionsStarted == 1 && resumptions == 0, "a stale nonce broke the tunnel")
        let accessLog = (try? String(contentsOfFile: squid.directory + "/access.log", encoding: .utf8)) ?? ""
        let challenges = accessLog.split(separator: "\n").filter { $0.contains("/407") }.count
        #expect(challenges >= 3, "squid challenged \(challenges) times: the nonce never went stale\n\(accessLog.suffix(2000))")
        await client.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }

    /// `fixtures/ntlm_proxy.py` on a free loopback port, demanding NTLM from `Domain\User` with `Password`.
    struct NTLMCheckingProxy {
        let process: ChildProcess
        let port: Int
        let logPath: String
        var log: String { (try? String(contentsOfFile: self.logPath, encoding: .utf8)) ?? "" }

        static func start() async throws -> NTLMCheckingProxy {
            let logPath = FileManager.default.temporaryDirectory.appendingPathComponent("culvert-ntlm-\(UUID().uuidString).log").path
            let started = try await RealProxy.startOnFreePort { port -> NTLMCheckingProxy? in
                let process = try ChildProcess.spawn(
                    "/usr/bin/python3", [fixturesDirectory() + "/ntlm_proxy.py", String(port), "User", "Domain", "Password", logPath],
                    outputPath: logPath + ".output"
                )
                let proxy = NTLMCheckingProxy(process: process, port: port, logPath: logPath)
                if try await RealProxy.waitForListener(port: port, startedBy: process) { return proxy }
                process.stop()
                return nil
            }
            return try #require(started, "fixtures/ntlm_proxy.py did not start")
        }

        func stop() {
            self.process.stop()
            try? FileManager.default.removeItem(atPath: self.logPath)
            try? FileManager.default.removeItem(atPath: self.logPath + ".output")
        }
    }

    /// NTLMv2 through a proxy that checks the answer itself (its own MD4 and HMAC-MD5, checked against MS-NLMP's
    /// values at start), over all four transports: the right password carries data, a wrong one is refused.
    @Test(arguments: TransportKind.allCases)
    func ntlmIsAnsweredSoThatAnIndependentCheckOfTheMSNLMPArithmeticAcceptsIt(transport: TransportKind) async throws {
        let proxy = try await NTLMCheckingProxy.start()
        defer { proxy.stop() }
        let echo = try await EchoServer.start(group: self.group)
        let server = try await TunnelHarness.startServer(allow: ["127.0.0.1:\(echo.port)"])
        let port = server.localAddress!.port!
        let wrong = await self.connectError(
            transport: transport, proxy: ProxyConfiguration(host: "127.0.0.1", port: proxy.port, username: "Domain\\User", password: "nope"),
            serverPort: port
        )
        #expect(wrong == .proxyAuthenticationRequired(proxy: "http://127.0.0.1:\(proxy.port)", scheme: "NTLM", credentialsSent: true))
        #expect(proxy.log.contains("refused: NTProofStr does not verify (wrong password)"), "\(proxy.log)")

        let configuration = ProxyConfiguration(host: "127.0.0.1", port: proxy.port, username: "Domain\\User", password: "Password")
        let client = try await TunnelHarness.connectClient(serverPort: port, targets: [echo.port], transport: transport, proxy: configuration)
        let result = try await TransferClient.echoTransfer(
            host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: 256 * 1024, group: self.group
        )
        #expect(result.digestsMatch, "\(transport)")
        #expect(proxy.log.contains("verified user Domain\\User"), "\(proxy.log)")
        await client.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }

    /// squid's own NTLM (its ntlm_fake_auth helper checks the exchange's flow on one kept-alive connection, not the
    /// password) over every transport squid lets through.
    @Test func ntlmThroughSquidCarriesDataOverEveryTransportItPasses() async throws {
        let squid = try await RealProxy.start(.squid, configuration: fixturesDirectory() + "/proxies/squid-forward-ntlm.conf")
        defer { squid.stop() }
        let echo = try await EchoServer.start(group: self.group)
        let server = try await TunnelHarness.startServer(allow: ["127.0.0.1:\(echo.port)"])
        for transport in Self.transports {
            let proxy = ProxyConfiguration(host: "127.0.0.1", port: squid.port, username: "CORP\\alice", password: "s3cret")
            let client = try await TunnelHarness.connectClient(
                serverPort: server.localAddress!.port!, targets: [echo.port], transport: transport, proxy: proxy
            )
            let result = try await TransferClient.echoTransfer(
                host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: 256 * 1024, group: self.group
            )
            #expect(result.digestsMatch, "\(transport)")
            #expect(proxy.authenticator?.schemeName == "NTLM")
            await client.shutdown(gracePeriod: .zero)
        }
        let accessLog = (try? String(contentsOfFile: squid.directory + "/access.log", encoding: .utf8)) ?? ""
        #expect(accessLog.contains("alice"), "squid logged no NTLM user\n\(accessLog.suffix(1500))")
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }
}
