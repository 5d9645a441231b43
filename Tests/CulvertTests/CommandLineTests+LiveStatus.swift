import CulvertTools
import Foundation
import NIOCore
import NIOPosix
import Testing

/// The client's live status line: on a terminal, one line under the log lines with the transport, the round trip,
/// the streams and the rate each way, redrawn in place, cleared for every log line; never when standard error is
/// not a terminal.
extension CommandLineTests {
    @Test func onATerminalTheClientShowsALiveStatusLineAndLogLinesScrollAboveIt() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let echo = try await EchoServer.start(group: group)
        let serverPort = try await RawConnection.unusedPort(group: group)
        let server = try LoggedProcess(["server", "--listen", "127.0.0.1:\(serverPort)", "--token", "t", "--allow", "127.0.0.1:\(echo.port)"])
        defer { server.stop() }
        #expect(try await RealProxy.waitForListener(port: serverPort, startedBy: server.process))
        let plainPort = try await RawConnection.unusedPort(group: group)
        let plain = try LoggedProcess([
            "client", "http://127.0.0.1:\(serverPort)", "--token", "t", "--transport", "websocket", "--log-format", "text",
            "-L", "127.0.0.1:\(plainPort):127.0.0.1:\(echo.port)",
        ])
        defer { plain.stop() }
        #expect(try await plain.waitForLog("tunnel established"), "\(plain.log)")

        let localPort = try await RawConnection.unusedPort(group: group)
        let client = try LoggedProcess(
            ["client", "http://127.0.0.1:\(serverPort)", "--token", "t", "--transport", "websocket", "-L", "127.0.0.1:\(localPort):127.0.0.1:\(echo.port)"],
            onTerminal: true
        )
        defer { client.stop() }
        #expect(try await client.waitForLog("\r\u{1B}[2Kculvert: websocket · rtt "), "\(client.log)")
        // The status measures the round trip itself: the next line has a figure.
        #expect(try await client.waitForLog { $0.contains(/rtt [0-9.]+ ms · 0 streams · up 0 B\/s · down 0 B\/s/) }, "\(client.log)")

        let connection = try await EchoConnection(port: localPort, group: group)
        let payload = String(repeating: "status line ", count: 8192)
        #expect(try await connection.echo(payload) == payload)
        #expect(try await client.waitForLog { $0.contains(/1 stream · up [1-9][0-9.]* (B|KiB|MiB)\/s · down [1-9]/) }, "\(client.log)")

        // A log line while the status is shown: the status is erased first, the line starts at the margin, and the
        // status comes back under it, saying the client reconnects.
        kill(server.process.pid, SIGKILL)
        #expect(try await client.waitForLog("\r\u{1B}[2K20"), "\(client.log)")
        #expect(try await client.waitForLog { $0.contains(/websocket · reconnecting · rtt [^·]+ · 1 stream/) }, "\(client.log)")

        // A client whose standard error is not a terminal shows no status line.
        #expect(!plain.log.contains("culvert: websocket ·"), "\(plain.log)")
        #expect(!plain.log.contains("\u{1B}["), "\(plain.log)")
        try await connection.channel.close()
        try await echo.close()
    }
}
