import Culvert
import CulvertCore
import CulvertTools
import CulvertTransport
import Foundation
import NIOCore
import NIOPosix
import Testing

/// `-H`: an HTTP proxy on the client for CONNECT and absolute-form requests, each to the target it names through the
/// tunnel. curl is the proxy's client and nginx the target, both from Debian.
@Suite(.serialized, .timeLimit(.minutes(2))) struct HTTPProxyListenerTests {
    /// A tunnel whose client listens as an HTTP proxy.
    static func proxyTunnel(allow: [String]) async throws -> ListenerTunnel {
        try await ListenerTunnel.start(allow: allow, listener: .httpProxy(ListenAddress(port: 0)))
    }

    static func curl(_ arguments: [String]) -> String {
        ChildProcess.run("/usr/bin/curl", ["-sS", "--max-time", "10", "--no-progress-meter"] + arguments) ?? "curl did not start"
    }

    @Test func anAbsoluteFormRequestGoesToItsTargetAsOriginForm() async throws {
        let web = try await startWebTarget()
        defer { web.stop() }
        let tunnel = try await Self.proxyTunnel(allow: ["localhost:\(web.port)"])
        let page = Self.curl(["--proxy", "http://127.0.0.1:\(tunnel.port)", "http://localhost:\(web.port)/a/page?with=query"])
        await tunnel.stop()
        #expect(page == "nginx saw GET /a/page?with=query for host localhost\n")
    }

    @Test func requestsToTwoTargetsOnOneConnectionEachKeepTheirStream() async throws {
        let web = try await startWebTarget()
        defer { web.stop() }
        let tunnel = try await Self.proxyTunnel(allow: ["localhost:\(web.port)", "127.0.0.1:\(web.port)"])
        // One curl, one proxy connection, requests alternating between two targets (names) of the same nginx.
        let urls = (0..<10).map { "http://\($0 % 2 == 0 ? "localhost" : "127.0.0.1"):\(web.port)/\($0)" }
        let output = Self.curl(["--proxy", "http://127.0.0.1:\(tunnel.port)"] + urls)
        let streams = try await tunnel.streamsOpened()
        await tunnel.stop()
        #expect(output == (0..<10).map { "nginx saw GET /\($0) for host \($0 % 2 == 0 ? "localhost" : "127.0.0.1")\n" }.joined())
        #expect(streams == 2, "one stream per target, kept alive for its next requests")
    }

    @Test func postBodiesGoThroughWithALengthAndChunked() async throws {
        let web = try await startWebTarget()
        defer { web.stop() }
        let tunnel = try await Self.proxyTunnel(allow: ["localhost:\(web.port)"])
        let body = String(repeating: "form-data ", count: 3000)
        let withLength = Self.curl(["--proxy", "http://127.0.0.1:\(tunnel.port)", "--data-binary", body, "http://localhost:\(web.port)/length"])
        let chunked = Self.curl(["--proxy", "http://127.0.0.1:\(tunnel.port)", "-H", "Transfer-Encoding: chunked", "--data-binary", body, "http://localhost:\(web.port)/chunked"])
        let log = try String(contentsOfFile: web.directory + "/access.log", encoding: .utf8)
        await tunnel.stop()
        #expect(withLength == "nginx saw POST /length for host localhost\n")
        #expect(chunked == "nginx saw POST /chunked for host localhost\n")
        // nginx answered each request once: no request was cut or merged with the next.
        #expect(log.components(separatedBy: "POST /length").count == 2 && log.components(separatedBy: "POST /chunked").count == 2, "\(log)")
    }

    @Test func connectOpensARawStreamThatCurlTunnelsThrough() async throws {
        let web = try await startWebTarget()
        defer { web.stop() }
        let tunnel = try await Self.proxyTunnel(allow: ["localhost:\(web.port)"])
        let page = Self.curl(["--proxy", "http://127.0.0.1:\(tunnel.port)", "--proxytunnel", "http://localhost:\(web.port)/tunnelled"])
        await tunnel.stop()
        #expect(page == "nginx saw GET /tunnelled for host localhost\n")
    }

    @Test func connectToATargetTheServerDoesNotAllowIsAnswered403WithTheReason() async throws {
        let tunnel = try await Self.proxyTunnel(allow: ["localhost:1"])
        let answer = try await Self.rawRequest("CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n", port: tunnel.port)
        let curl = Self.curl(["--proxy", "http://127.0.0.1:\(tunnel.port)", "--proxytunnel", "http://db.internal:5432/"])
        await tunnel.stop()
        #expect(answer.hasPrefix("HTTP/1.1 403 Forbidden\r\n"), "\(answer)")
        #expect(answer.contains("\r\n\r\nculvert: the tunnel's server could not open db.internal:5432: ") && answer.contains("not allowed"), "\(answer)")
        #expect(answer.hasSuffix("\n") && answer.split(separator: "\r\n\r\n").last?.split(separator: "\n").count == 1, "a one-line body: \(answer)")
        #expect(curl.contains("CONNECT tunnel failed, response 403"), "\(curl)")
    }

    @Test func connectToAClosedPortIs502AndToANameThatDoesNotResolveToo() async throws {
        let closedPort = try await RawConnection.unusedPort(group: TunnelHarness.group)
        let tunnel = try await Self.proxyTunnel(allow: ["127.0.0.1:\(closedPort)", "no-such-host.invalid:80"])
        let refused = try await Self.rawRequest("CONNECT 127.0.0.1:\(closedPort) HTTP/1.1\r\n\r\n", port: tunnel.port)
        let unresolved = try await Self.rawRequest("CONNECT no-such-host.invalid:80 HTTP/1.1\r\n\r\n", port: tunnel.port)
        await tunnel.stop()
        #expect(refused.hasPrefix("HTTP/1.1 502 Bad Gateway\r\n") && refused.contains("refused"), "\(refused)")
        #expect(unresolved.hasPrefix("HTTP/1.1 502 Bad Gateway\r\n"), "\(unresolved)")
    }

    @Test func anAbsoluteFormRequestToARefusedTargetIsAnswered403() async throws {
        let tunnel = try await Self.proxyTunnel(allow: ["localhost:1"])
        let status = Self.curl(["--proxy", "http://127.0.0.1:\(tunnel.port)", "-o", "/dev/null", "-w", "%{http_code}", "http://intranet.example:8080/"])
        await tunnel.stop()
        #expect(status == "403")
    }

    @Test func anOriginFormRequestIsAnswered400SayingWhatTheProxyTakes() async throws {
        let tunnel = try await Self.proxyTunnel(allow: ["*:*"])
        let answer = try await Self.rawRequest("GET /index.html HTTP/1.1\r\nHost: example\r\n\r\n", port: tunnel.port)
        let streams = try await tunnel.streamsOpened()
        await tunnel.stop()
        #expect(answer.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(answer)")
        #expect(answer.contains("takes absolute http:// URLs"), "\(answer)")
        #expect(streams == 0)
    }

    /// Sends `request`, half-closes, and returns the whole answer.
    static func rawRequest(_ request: String, port: Int) async throws -> String {
        let answer = try await RawConnection.sendThenHalfCloseAndReadAll(port: port, bytes: Array(request.utf8), group: TunnelHarness.group)
        return String(decoding: answer, as: UTF8.self)
    }
}
