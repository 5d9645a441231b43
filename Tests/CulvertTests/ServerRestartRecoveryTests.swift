import CulvertTransport
import CulvertTools
import Foundation
import NIOCore
import NIOPosix
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// `culvert server` killed with SIGKILL and started again on the same port: a chunked or polling client notices
/// that the server no longer knows its session and starts a new one within a backoff step, its listener open
/// throughout (the refusal of the resumption used to be lost, and the client kept trying to resume for minutes).
@Suite(.serialized) struct ServerRestartRecoveryTests {
    let group = MultiThreadedEventLoopGroup.singleton

    @Test(arguments: [TransportKind.chunked, .polling])
    func aClientRecoversAfterTheServerIsKilledAndRestarted(transport: TransportKind) async throws {
        let echo = try await EchoServer.start(group: self.group)
        let serverPort = try await RawConnection.unusedPort(group: self.group)
        let localPort = try await RawConnection.unusedPort(group: self.group)
        let culvert = CommandLineTests.executable.path
        let serverArguments = ["server", "--listen", "127.0.0.1:\(serverPort)", "--token", "t", "--allow", "127.0.0.1:\(echo.port)",
                               "--log-level", "error"]
        var server = try ChildProcess.spawn(culvert, serverArguments)
        #expect(try await RealProxy.waitForListener(port: serverPort, startedBy: server))
        let client = try ChildProcess.spawn(
            culvert,
            ["client", "http://127.0.0.1:\(serverPort)", "--token", "t", "--transport", "\(transport)",
             "-L", "127.0.0.1:\(localPort):127.0.0.1:\(echo.port)", "--log-level", "error"]
        )
        defer {
            client.stop()
            server.stop()
        }
        #expect(try await RealProxy.waitForListener(port: localPort, startedBy: client))
        let before = try await TransferClient.echoTransfer(host: "127.0.0.1", port: localPort, byteCount: 256 * 1024, group: self.group)
        #expect(before.digestsMatch)

        kill(server.pid, SIGKILL)
        var status: Int32 = 0
        waitpid(server.pid, &status, 0)
        server = try ChildProcess.spawn(culvert, serverArguments)
        #expect(try await RealProxy.waitForListener(port: serverPort, startedBy: server))
        let restarted = NIODeadline.now()

        // The first transfer that gets through marks the new session; a bounded number of tries, each waiting for
        // its own outcome.
        var recovered: TimeAmount?
        for _ in 0..<60 where recovered == nil {
            if let transfer = try? await TransferClient.echoTransfer(host: "127.0.0.1", port: localPort, byteCount: 64 * 1024, group: self.group),
                transfer.digestsMatch
            {
                recovered = NIODeadline.now() - restarted
            } else {
                try await Task.sleep(for: .milliseconds(250))
            }
        }
        let took = try #require(recovered, "the client did not recover within 60 tries")
        // One resumption attempt (refused) and one new session, each after a backoff step of at most a few seconds.
        #expect(took < .seconds(15), "recovery took \(took.seconds) s")
        try await echo.close()
    }
}
