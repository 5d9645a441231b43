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

    @Test(.timeLimit(.minutes(2)), arguments: [TransportKind.chunked, .polling])
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

        // The first transfer that gets through marks the new session. Each try has 3 s (a stream opened while the
        // session still waits to resume would wait for good), and all of them 30 s.
        var recovered: TimeAmount?
        while recovered == nil, NIODeadline.now() - restarted < .seconds(30) {
            if try await Self.echoesWithin(.seconds(3), port: localPort, group: self.group) {
                recovered = NIODeadline.now() - restarted
            } else {
                try await Task.sleep(for: .milliseconds(250))
            }
        }
        let took = try #require(recovered, "the client did not recover within 30 s")
        // One resumption attempt (refused) and one new session, each after a backoff step of at most a few seconds.
        #expect(took < .seconds(15), "recovery took \(took.seconds) s")
        try await echo.close()
    }

    /// Whether a 64 KiB echo through `port` comes back intact within `limit`.
    private static func echoesWithin(_ limit: TimeAmount, port: Int, group: any EventLoopGroup) async throws -> Bool {
        try await withThrowingTaskGroup(of: Bool.self) { tasks in
            tasks.addTask {
                let transfer = try? await TransferClient.echoTransfer(host: "127.0.0.1", port: port, byteCount: 64 * 1024, group: group)
                return transfer?.digestsMatch ?? false
            }
            tasks.addTask {
                try await Task.sleep(nanoseconds: UInt64(limit.nanoseconds))
                return false
            }
            let first = try await tasks.next() ?? false
            tasks.cancelAll()
            return first
        }
    }
}
