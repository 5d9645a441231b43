import Culvert
import CulvertTools
import NIOConcurrencyHelpers
import Foundation
import NIOCore
import NIOPosix
import Testing

/// A server drained with SIGTERM while a client has an open stream: the stream goes on over the old session to its
/// end, the client's next connections go to a new session at once (here: the server that replaced it on the same
/// port, as in a rolling restart), none is refused in between, and the old server exits 0 once its stream is done.
extension CommandLineTests {
    /// A TCP connection through the tunnel that can echo more than once: what comes back is gathered, and each
    /// echo awaits its whole reply.
    final class EchoConnection: Sendable {
        let channel: any Channel
        let received = NIOLockedValueBox("")
        let arrivals = StateChangeSignal()

        init(port: Int, group: any EventLoopGroup) async throws {
            let received = self.received
            let arrivals = self.arrivals
            self.channel = try await ClientBootstrap(group: group)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(Gatherer { text in
                            received.withLockedValue { $0 += text }
                            arrivals.notify()
                        })
                    }
                }
                .connect(host: "127.0.0.1", port: port).get()
        }

        /// Writes `text` and returns what came back once as many bytes as were sent in all have (or 20 s passed).
        func echo(_ text: String) async throws -> String {
            let before = self.received.withLockedValue { $0.utf8.count }
            try await self.channel.writeAndFlush(ByteBuffer(string: text))
            return await self.reply(length: text.utf8.count, after: before)
        }

        func reply(length: Int, after offset: Int = 0) async -> String {
            _ = await self.arrivals.wait(timeout: .seconds(20)) { self.received.withLockedValue { $0.utf8.count } >= offset + length }
            return self.received.withLockedValue { String(decoding: Array($0.utf8).dropFirst(offset), as: UTF8.self) }
        }
    }

    /// Hands every read to `onText`.
    final class Gatherer: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let onText: @Sendable (String) -> Void
        init(_ onText: @escaping @Sendable (String) -> Void) { self.onText = onText }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) { self.onText(String(buffer: self.unwrapInboundIn(data))) }
    }

    @Test func aDrainedServersOpenStreamFinishesWhileNewStreamsGoToTheServerThatReplacedIt() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let echo = try await EchoServer.start(group: group)
        let serverPort = try await RawConnection.unusedPort(group: group)
        let localPort = try await RawConnection.unusedPort(group: group)
        let serverArguments = ["server", "--listen", "127.0.0.1:\(serverPort)", "--token", "t", "--allow", "127.0.0.1:\(echo.port)", "--drain-timeout", "60"]
        let old = try LoggedProcess(serverArguments)
        defer { old.stop() }
        #expect(try await RealProxy.waitForListener(port: serverPort, startedBy: old.process))
        let client = try LoggedProcess([
            "client", "http://127.0.0.1:\(serverPort)", "--token", "t", "--transport", "websocket", "-L", "127.0.0.1:\(localPort):127.0.0.1:\(echo.port)",
        ])
        defer { client.stop() }
        #expect(try await client.waitForLog("tunnel established"), "\(client.log)")

        let held = try await EchoConnection(port: localPort, group: group)
        #expect(try await held.echo("before the drain") == "before the drain")

        kill(old.process.pid, SIGTERM)
        #expect(try await client.waitForLog("the server is draining this session (GOAWAY): its 1 open stream stay on it"), "\(client.log)")
        #expect(old.log.contains("shutting down: no new sessions, GOAWAY to 1 session"), "\(old.log)")
        // A connection made now waits for the new session (no server takes it yet): it is not refused.
        let waiting = try await EchoConnection(port: localPort, group: group)
        try await waiting.channel.writeAndFlush(ByteBuffer(string: "made while no server took new sessions"))

        let replacement = try LoggedProcess(serverArguments)
        defer { replacement.stop() }
        #expect(try await RealProxy.waitForListener(port: serverPort, startedBy: replacement.process))
        #expect(try await client.waitForLog("new session established"), "\(client.log)")
        #expect(await waiting.reply(length: 38) == "made while no server took new sessions")
        #expect(try await held.echo("after the drain began") == "after the drain began")
        #expect(old.process.isRunning, "the old server waits for its open stream")

        try await held.channel.close()
        #expect(old.waitForExit() == 0, "\(old.log)")
        #expect(old.log.contains("drained: exiting"), "\(old.log)")
        let fresh = try await EchoConnection(port: localPort, group: group)
        #expect(try await fresh.echo("after the old server left") == "after the old server left")
        try await waiting.channel.close()
        try await fresh.channel.close()
        try await echo.close()
    }
}
