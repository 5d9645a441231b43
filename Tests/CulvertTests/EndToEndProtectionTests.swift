import Culvert
import CulvertCore
import CulvertTools
import CulvertTransport
import Foundation
import NIOCore
import NIOPosix
import Testing

/// End-to-end protection against a proxy that opens TLS with a CA the client trusts: it reads nothing of what the
/// tunnel carries, over every transport; any change it makes to the stream ends the session with the reason, and
/// nothing altered reaches the application. With protection off on both sides (and only then) it reads everything.
@Suite(.serialized, .timeLimit(.minutes(2))) struct EndToEndProtectionTests {
    let group = TunnelHarness.group

    /// The server's PKI and the inspecting proxy's own CA, with a certificate of it for 127.0.0.1.
    struct Interception {
        let pki: TLSTests.PKI
        let proxyCAFile: String
        let proxyCA: (certificatePEM: String, keyPEM: String)
        let proxyCertificate: (certificatePEM: String, keyPEM: String)

        static func make() throws -> Interception {
            let pki = try TLSTests.PKI.make()
            let proxyCA = try ServerTLS.makeSelfSigned(names: ["Corporate Inspection CA"], validFrom: Date(), days: 30, isCertificateAuthority: true)
            let proxyCertificate = try ServerTLS.makeSelfSigned(names: ["127.0.0.1", "localhost"], validFrom: Date(), days: 30, issuer: proxyCA)
            let proxyCAFile = pki.directory + "/inspection-ca.pem"
            try proxyCA.certificatePEM.write(toFile: proxyCAFile, atomically: true, encoding: .utf8)
            return Interception(pki: pki, proxyCAFile: proxyCAFile, proxyCA: proxyCA, proxyCertificate: proxyCertificate)
        }
    }

    /// What the application sends: text a proxy would find if it could read it.
    static let secret = Array(String(repeating: "the payload no proxy may read; ", count: 2048).utf8)

    /// An echo target, a TLS server, the inspecting proxy in front of it and a client through the proxy.
    struct InterceptedTunnel {
        let interception: Interception
        let echo: EchoServer
        let server: TunnelServer
        let proxy: InterceptingProxy
        let client: TunnelClient

        /// Sends `bytes` through the tunnel to the echo target and returns what came back before it closed.
        func echo(_ bytes: [UInt8]) async throws -> [UInt8] {
            try await RawConnection.sendThenHalfCloseAndReadAll(port: self.client.listenerAddresses[0].port!, bytes: bytes, group: TunnelHarness.group)
        }

        func stop() async throws {
            await self.client.shutdown(gracePeriod: .zero)
            await self.server.shutdown(gracePeriod: .zero)
            try await self.proxy.close()
            try await self.echo.close()
            try? FileManager.default.removeItem(atPath: self.interception.pki.directory)
        }
    }

    func intercepted(
        transport: TransportKind, sealing: Bool = true, tamper: InterceptingProxy.Tamper? = nil,
        direction: InterceptingProxy.Direction = .fromServer
    ) async throws -> InterceptedTunnel {
        let interception = try Interception.make()
        let echo = try await EchoServer.start(group: self.group)
        let server = try await self.startServer(interception, echoPort: echo.port, sealing: sealing)
        let proxy = try await InterceptingProxy.start(
            upstreamPort: server.localAddress!.port!, certificatePEM: interception.proxyCertificate.certificatePEM,
            keyPEM: interception.proxyCertificate.keyPEM, tamper: tamper, sealedFrame: 3, direction: direction, group: self.group
        )
        let client = try await self.connectClient(
            serverPort: proxy.port, interception, echoPort: echo.port, transport: transport, sealing: sealing
        )
        return InterceptedTunnel(interception: interception, echo: echo, server: server, proxy: proxy, client: client)
    }

    /// A TLS server (the test PKI's certificate) that lets streams reach the echo target.
    func startServer(_ interception: Interception, echoPort: Int, sealing: Bool = true) async throws -> TunnelServer {
        var session = SessionConfiguration(token: "test-token")
        session.sealing = sealing
        return try await TunnelServer.start(
            configuration: .init(
                listenHost: "127.0.0.1", listenPort: 0, session: session,
                allowlist: Allowlist(entries: [try Allowlist.Entry(parsing: "127.0.0.1:\(echoPort)")]),
                tls: try interception.pki.serverTLS()
            ),
            group: self.group, logger: TunnelHarness.logger
        )
    }

    /// A client of `https://127.0.0.1:serverPort` (through `proxy`, if any) that trusts only the inspecting
    /// proxy's CA, forwarding one port to the echo target. It does not reconnect within a test's time.
    func connectClient(
        serverPort: Int, proxy: ProxyConfiguration? = nil, _ interception: Interception, echoPort: Int, transport: TransportKind,
        sealing: Bool = true
    ) async throws -> TunnelClient {
        var session = SessionConfiguration(token: "test-token")
        session.sealing = sealing
        return try await TunnelClient.connect(
            configuration: .init(
                server: ServerEndpoint(host: "127.0.0.1", port: serverPort, usesTLS: true),
                transport: transport,
                transportOptions: TransportOptions(
                    connectTimeout: .seconds(5), proxy: proxy,
                    tls: try ClientTLS(verification: .certificateAuthorities(file: interception.proxyCAFile)),
                    logger: TunnelHarness.logger
                ),
                session: session,
                forwards: [ForwardSpec(bindPort: 0, target: .init(host: "127.0.0.1", port: echoPort))],
                reconnect: ReconnectBackoff(initial: .seconds(30), maximum: .seconds(30))
            ),
            group: self.group, logger: TunnelHarness.logger
        )
    }

    @Test(arguments: TransportKind.allCases)
    func aProxyThatOpensTLSReadsNothingTheTunnelCarries(transport: TransportKind) async throws {
        let tunnel = try await self.intercepted(transport: transport)
        let echoed = try await tunnel.echo(Self.secret)
        #expect(echoed == Self.secret, "\(transport): the echo came back \(echoed.count) of \(Self.secret.count) bytes")
        let seen = tunnel.proxy.seen
        // It did open TLS: the tunnel's HTTP is plain to it.
        #expect(seen.firstRange(of: Array("/culvert/".utf8)) != nil, "\(transport): the proxy saw no HTTP in the clear")
        #expect(seen.firstRange(of: Array("no proxy may read".utf8)) == nil, "\(transport): the proxy read the payload")
        #expect(seen.firstRange(of: Array("127.0.0.1:\(tunnel.echo.port)".utf8)) == nil, "\(transport): the proxy read the target")
        try await tunnel.stop()
    }

    /// squid from Debian, built with OpenSSL (`squid-openssl`), bumping TLS with its own CA as a company proxy does:
    /// the tunnel works over every transport through it, and nothing squid logs (its access log lists every tunnel
    /// request, so it did read inside TLS) holds the payload.
    @Test(arguments: TransportKind.allCases)
    func squidInspectingTLSCarriesTheTunnelAndLogsNoneOfThePayload(transport: TransportKind) async throws {
        let interception = try Interception.make()
        defer { try? FileManager.default.removeItem(atPath: interception.pki.directory) }
        // squid's certificate database, made before it starts, writable by the user squid drops to as root.
        let database = interception.pki.directory + "/ssl_db"
        #expect(ChildProcess.run("/usr/lib/squid/security_file_certgen", ["-c", "-s", database, "-M", "4MB"]) != nil)
        _ = ChildProcess.run("/bin/chmod", ["-R", "a+rwX", interception.pki.directory])
        let squid = try await RealProxy.start(
            .squid, configuration: fixturesDirectory() + "/proxies/squid-sslbump.conf",
            extraLines: ["sslcrtd_program /usr/lib/squid/security_file_certgen -s \(database) -M 4MB", "sslcrtd_children 2 startup=1 idle=1"],
            files: ["ca.pem": interception.proxyCA.certificatePEM, "ca.key": interception.proxyCA.keyPEM]
        )
        defer { squid.stop() }
        let echo = try await EchoServer.start(group: self.group)
        let server = try await self.startServer(interception, echoPort: echo.port)
        let client = try await self.connectClient(
            serverPort: server.localAddress!.port!, proxy: ProxyConfiguration(host: "127.0.0.1", port: squid.port), interception,
            echoPort: echo.port, transport: transport
        )
        let echoed = try await RawConnection.sendThenHalfCloseAndReadAll(
            port: client.listenerAddresses[0].port!, bytes: Self.secret, group: self.group
        )
        #expect(echoed == Self.secret, "\(transport): the echo came back \(echoed.count) of \(Self.secret.count) bytes")
        // (The client trusts only squid's CA: the echo came through squid's own TLS.) An upgraded request is logged
        // when its connection ends.
        await client.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
        var accessLog = ""
        for _ in 0..<100 where !accessLog.contains("/culvert/") {
            try await Task.sleep(for: .milliseconds(50))
            accessLog = (try? String(contentsOfFile: squid.directory + "/access.log", encoding: .utf8)) ?? ""
        }
        #expect(accessLog.contains("/culvert/"), "\(transport): squid did not read inside TLS:\n\(accessLog)")
        #expect(!(accessLog + squid.log).contains("no proxy may read"), "\(transport): squid logged the payload")
    }

    /// The same proxy reads the payload once both sides turn protection off: what the flag gives away.
    @Test func withProtectionOffOnBothSidesTheSameProxyReadsThePayload() async throws {
        let tunnel = try await self.intercepted(transport: .connect, sealing: false)
        #expect(try await tunnel.echo(Self.secret) == Self.secret)
        #expect(tunnel.proxy.seen.firstRange(of: Array("no proxy may read".utf8)) != nil)
        try await tunnel.stop()
    }

    /// A flipped bit, a dropped, repeated or made-up frame in either direction ends the session with the reason
    /// (the side that saw it tells the other in its GOAWAY); the application gets the bytes that came before,
    /// intact, then its connection ends — never a byte the proxy changed.
    @Test(arguments: InterceptingProxy.Tamper.allCases, InterceptingProxy.Direction.allCases)
    func anyChangeToTheStreamEndsTheSessionAndNothingAlteredIsDelivered(
        tamper: InterceptingProxy.Tamper, direction: InterceptingProxy.Direction
    ) async throws {
        let tunnel = try await self.intercepted(transport: .connect, tamper: tamper, direction: direction)
        let session = tunnel.client.session
        let sent = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 9) }
        let echoed = try await tunnel.echo(sent)
        #expect(tunnel.proxy.tampered)
        let reason = try await Self.end(of: session, within: .seconds(10))
        #expect("\(reason)".contains("end-to-end integrity check failed"), "\(tamper) \(direction): the session ended with: \(reason)")
        #expect(echoed.count < sent.count, "\(tamper) \(direction): the whole echo arrived despite the change")
        #expect(echoed == Array(sent.prefix(echoed.count)), "\(tamper) \(direction): altered bytes reached the application")
        try await tunnel.stop()
    }

    /// Why `session` ended; fails if it has not ended `within` that time (an unaltered session goes on).
    static func end(of session: SessionHandle, within limit: TimeAmount) async throws -> SessionError {
        let bounded = session.eventLoop.makePromise(of: SessionError.self)
        let timeout = session.eventLoop.scheduleTask(in: limit) {
            bounded.fail(RawConnection.Failure(description: "the session did not end within \(limit)"))
        }
        session.ended.whenSuccess {
            timeout.cancel()
            bounded.succeed($0)
        }
        return try await bounded.futureResult.get()
    }

    /// Protection on at one side and off at the other: the client is refused with what to change, either way.
    @Test(arguments: [true, false])
    func protectionOnOneSideOnlyIsRefusedSayingWhatToChange(clientHasIt: Bool) async throws {
        let echo = try await EchoServer.start(group: self.group)
        var session = SessionConfiguration(token: "test-token")
        session.sealing = !clientHasIt
        let server = try await TunnelServer.start(
            configuration: .init(listenHost: "127.0.0.1", listenPort: 0, session: session, allowlist: Allowlist(entries: [])),
            group: self.group, logger: TunnelHarness.logger
        )
        var clientSession = SessionConfiguration(token: "test-token")
        clientSession.sealing = clientHasIt
        do {
            let client = try await TunnelClient.connect(
                configuration: .init(
                    server: ServerEndpoint(host: "127.0.0.1", port: server.localAddress!.port!),
                    transport: .websocket,
                    transportOptions: TransportOptions(connectTimeout: .seconds(5), logger: TunnelHarness.logger),
                    session: clientSession,
                    forwards: [ForwardSpec(bindPort: 0, target: .init(host: "127.0.0.1", port: echo.port))]
                ),
                group: self.group, logger: TunnelHarness.logger
            )
            await client.shutdown(gracePeriod: .zero)
            Issue.record("connected with protection \(clientHasIt ? "on" : "off") at the client only")
        } catch {
            #expect("\(error)".contains("end-to-end session encryption is \(clientHasIt ? "on" : "off") at the client"), "\(error)")
            #expect("\(error)".contains("--no-session-encryption"), "\(error)")
        }
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }
}
