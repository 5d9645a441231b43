import Culvert
import CulvertCore
import CulvertTools
import CulvertTransport
import Foundation
import NIOCore
import NIOPosix
import Testing

/// `-D`: a SOCKS5 proxy on the client whose connections go through the tunnel to the targets they name. curl is the
/// SOCKS client and nginx the target, both from Debian; the reply codes are checked byte by byte with a raw client.
@Suite(.serialized, .timeLimit(.minutes(2))) struct SOCKSListenerTests {
    /// A tunnel whose client listens as a SOCKS5 proxy (with `credentials`, when given).
    static func socksTunnel(allow: [String], credentials: SOCKSCredentials? = nil) async throws -> ListenerTunnel {
        try await ListenerTunnel.start(allow: allow, listener: .socks(ListenAddress(port: 0), credentials: credentials))
    }

    /// Runs curl with `arguments` (plus a time limit) and returns what it printed, standard error included.
    static func curl(_ arguments: [String]) -> String {
        ChildProcess.run("/usr/bin/curl", ["-sS", "--max-time", "10"] + arguments) ?? "curl did not start"
    }

    @Test func curlWithSOCKS5HostnameReachesATargetNamedByHostNameResolvedOnTheServerSide() async throws {
        let web = try await startWebTarget()
        defer { web.stop() }
        let tunnel = try await Self.socksTunnel(allow: ["localhost:\(web.port)"])
        let output = Self.curl(["--socks5-hostname", "127.0.0.1:\(tunnel.port)", "http://localhost:\(web.port)/through/socks"])
        await tunnel.stop()
        #expect(output == "nginx saw GET /through/socks for host localhost\n")
    }

    @Test func curlWithSOCKS5ReachesIPv4AndIPv6Targets() async throws {
        let web = try await startWebTarget()
        defer { web.stop() }
        let tunnel = try await Self.socksTunnel(allow: ["127.0.0.1:\(web.port)", "[::1]:\(web.port)"])
        let proxy = ["--socks5", "127.0.0.1:\(tunnel.port)"]
        let overIPv4 = Self.curl(proxy + ["http://127.0.0.1:\(web.port)/four"])
        let overIPv6 = Self.curl(proxy + ["-g", "http://[::1]:\(web.port)/six"])
        await tunnel.stop()
        #expect(overIPv4 == "nginx saw GET /four for host 127.0.0.1\n")
        #expect(overIPv6 == "nginx saw GET /six for host [::1]\n")
    }

    @Test func manyRequestsOnKeptAliveAndParallelConnectionsAllArrive() async throws {
        let web = try await startWebTarget()
        defer { web.stop() }
        let tunnel = try await Self.socksTunnel(allow: ["localhost:\(web.port)"])
        // One curl, 20 URLs: reused connections; --parallel opens several SOCKS connections at once.
        let urls = (0..<20).map { "http://localhost:\(web.port)/page/\($0)" }
        let output = Self.curl(["--socks5-hostname", "127.0.0.1:\(tunnel.port)", "--parallel", "--parallel-max", "5", "--no-progress-meter"] + urls)
        await tunnel.stop()
        // curl's --parallel progress meter shares the output; the pages are the lines nginx wrote.
        let lines = Set(output.split(separator: "\n").map(String.init).filter { $0.hasPrefix("nginx saw") })
        #expect(lines == Set((0..<20).map { "nginx saw GET /page/\($0) for host localhost" }))
    }

    @Test func aTargetTheServerDoesNotAllowIsAnsweredNotAllowedByRuleset() async throws {
        let web = try await startWebTarget()
        defer { web.stop() }
        let tunnel = try await Self.socksTunnel(allow: ["localhost:1"])
        let reply = try await Self.rawConnect(socksPort: tunnel.port, host: "localhost", port: web.port)
        let output = Self.curl(["--socks5-hostname", "127.0.0.1:\(tunnel.port)", "http://localhost:\(web.port)/"])
        await tunnel.stop()
        #expect(reply == 0x02, "SOCKS5 reply 2: connection not allowed by ruleset")
        #expect(output.contains("curl: (97)"), "curl reports a proxy failure: \(output)")
        #expect(!output.contains("nginx saw"))
    }

    @Test func aTargetThatRefusesTheConnectionIsAnsweredConnectionRefused() async throws {
        let closedPort = try await RawConnection.unusedPort(group: TunnelHarness.group)
        let tunnel = try await Self.socksTunnel(allow: ["127.0.0.1:\(closedPort)"])
        let reply = try await Self.rawConnect(socksPort: tunnel.port, host: "127.0.0.1", port: closedPort)
        await tunnel.stop()
        #expect(reply == 0x05, "SOCKS5 reply 5: connection refused")
    }

    @Test func aNameThatDoesNotResolveIsAnsweredHostUnreachable() async throws {
        let tunnel = try await Self.socksTunnel(allow: ["*:80"])
        let reply = try await Self.rawConnect(socksPort: tunnel.port, host: "no-such-host.invalid", port: 80)
        await tunnel.stop()
        #expect(reply == 0x04, "SOCKS5 reply 4: host unreachable")
    }

    @Test func withSOCKSUserOnlyTheRightUsernameAndPasswordGetThrough() async throws {
        let web = try await startWebTarget()
        defer { web.stop() }
        let tunnel = try await Self.socksTunnel(
            allow: ["localhost:\(web.port)"], credentials: SOCKSCredentials(username: "alice", password: "s3cret:with:colons")
        )
        let proxy = ["--socks5-hostname", "127.0.0.1:\(tunnel.port)", "http://localhost:\(web.port)/auth"]
        let right = Self.curl(["--proxy-user", "alice:s3cret:with:colons"] + proxy)
        let wrong = Self.curl(["--proxy-user", "alice:guess"] + proxy)
        let none = Self.curl(proxy)
        await tunnel.stop()
        #expect(right == "nginx saw GET /auth for host localhost\n")
        #expect(wrong.contains("curl: (97)") && !wrong.contains("nginx saw"), "\(wrong)")
        #expect(none.contains("curl: (97)") && !none.contains("nginx saw"), "\(none)")
    }

    @Test func bytesSentTogetherWithTheGreetingAndRequestReachTheTargetAndComeBackInOrder() async throws {
        let echo = try await EchoServer.start(group: TunnelHarness.group)
        let tunnel = try await Self.socksTunnel(allow: ["127.0.0.1:\(echo.port)"])
        let payload = Array("optimistic bytes, then a half-close".utf8)
        let answer = try await RawConnection.sendThenHalfCloseAndReadAll(
            port: tunnel.port, bytes: Self.greetingAndConnect(host: "127.0.0.1", port: echo.port) + payload,
            group: TunnelHarness.group
        )
        await tunnel.stop()
        try await echo.close()
        // Method selection (2 bytes), success with an IPv4 bound address (10 bytes), then the echo.
        #expect(answer.count == 12 + payload.count)
        #expect(Array(answer.prefix(4)) == [5, 0, 5, 0])
        #expect(Array(answer.dropFirst(12)) == payload)
    }

    @Test func aClientThatDoesNotSpeakSOCKS5IsClosedWithoutAStream() async throws {
        let tunnel = try await Self.socksTunnel(allow: ["*:*"])
        let answer = try await RawConnection.sendThenHalfCloseAndReadAll(
            port: tunnel.port, bytes: Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8), group: TunnelHarness.group
        )
        let opened = try await tunnel.streamsOpened()
        await tunnel.stop()
        #expect(answer.isEmpty)
        #expect(opened == 0)
    }

    // MARK: Helpers

    /// Sends a SOCKS5 greeting (no authentication) and a CONNECT to `host` (a domain name or an IPv4 literal) in
    /// one write, and returns the reply code.
    static func rawConnect(socksPort: Int, host: String, port: Int) async throws -> UInt8 {
        let request = Self.greetingAndConnect(host: host, port: port)
        let answer = try await RawConnection.sendThenHalfCloseAndReadAll(port: socksPort, bytes: request, group: TunnelHarness.group)
        // Method selection (5, 0), then the reply: VER REP RSV ATYP …
        guard answer.count >= 4, answer[0] == 5, answer[1] == 0, answer[2] == 5 else {
            throw RawConnection.Failure(description: "not a SOCKS5 answer: \(answer)")
        }
        return answer[3]
    }

    /// A greeting offering no authentication and a CONNECT to `host:port`, in one write.
    static func greetingAndConnect(host: String, port: Int) -> [UInt8] {
        var request: [UInt8] = [5, 1, 0, 5, 1, 0]
        if let address = try? SocketAddress(ipAddress: host, port: port), case .v4(let v4) = address {
            request.append(1)
            request += withUnsafeBytes(of: v4.address.sin_addr.s_addr) { Array($0) }
        } else {
            request += [3, UInt8(host.utf8.count)] + Array(host.utf8)
        }
        request += [UInt8(port >> 8), UInt8(port & 0xFF)]
        return request
    }
}
