import Culvert
import CulvertCore
import CulvertTools
import CulvertTransport
import NIOCore
import NIOPosix
import Testing

/// The foundation's integration suite for every transport, directly and through forward proxies started by the
/// test (tinyproxy from Debian, and the Swift test proxy): client listener → tunnel → server → target.
@Suite(.serialized, .timeLimit(.minutes(3))) struct TransportMatrixTests {
    let group = TunnelHarness.group

    /// 4 MiB up and 4 MiB back through one stream (128 full DATA frames, 16 stream windows) arrive byte for byte
    /// (sha256 of each direction). Volume is `culvert bench`'s business.
    @Test(arguments: TunnelPath.all)
    func fourMiBEachWayArriveIntact(path: TunnelPath) async throws {
        try await path.withProxy { proxy in
            let echo = try await EchoServer.start(group: self.group)
            let harness = try await TunnelHarness.start(targets: [echo.port], transport: path.transport, proxy: proxy)
            #expect(try await harness.client.session.snapshot().transportKind == path.transport)
            let result = try await TransferClient.echoTransfer(
                host: "127.0.0.1", port: harness.localPort(), byteCount: 4 << 20, seed: 7, group: self.group
            )
            #expect(result.bytesReceived == 4 << 20)
            #expect(result.sentDigest == result.receivedDigest)
            await harness.stop()
            try await echo.close()
        }
    }

    /// 100 concurrent connections over three -L forwards all complete intact, over one session (and, for the
    /// transports that hold one connection, exactly one TCP connection between client and server).
    @Test(arguments: TunnelPath.all)
    func hundredConnectionsOverThreeForwardsShareOneTunnel(path: TunnelPath) async throws {
        try await path.withProxy { proxy in
            var echoes: [EchoServer] = []
            for _ in 0..<3 { echoes.append(try await EchoServer.start(group: self.group)) }
            let harness = try await TunnelHarness.start(targets: echoes.map(\.port), transport: path.transport, proxy: proxy)
            let results = try await withThrowingTaskGroup(of: TransferClient.Result.self) { tasks in
                for index in 0..<100 {
                    let port = harness.localPort(index % 3)
                    tasks.addTask {
                        try await TransferClient.echoTransfer(
                            host: "127.0.0.1", port: port, byteCount: 256 * 1024 + index, seed: UInt64(index + 1),
                            group: self.group
                        )
                    }
                }
                var results: [TransferClient.Result] = []
                for try await result in tasks { results.append(result) }
                return results
            }
            #expect(results.count == 100)
            #expect(results.allSatisfy { $0.digestsMatch })
            #expect(harness.server.activeSessions == 1)
            if path.transport == .websocket || path.transport == .connect {
                #expect(harness.server.acceptedConnections == 1)
            }
            #expect(try await harness.client.session.snapshot().statistics.streamsOpened == 100)
            await harness.stop()
            for echo in echoes { try await echo.close() }
        }
    }

    /// A client that half-closes still receives the reply the target sends after seeing the FIN.
    @Test(arguments: TunnelPath.all)
    func halfCloseStillDeliversTheReply(path: TunnelPath) async throws {
        try await path.withProxy { proxy in
            let digest = try await DigestServer.start(group: self.group)
            let harness = try await TunnelHarness.start(targets: [digest.port], transport: path.transport, proxy: proxy)
            let reply = try await RawConnection.sendThenHalfCloseAndReadAll(
                port: harness.localPort(), bytes: Array(repeating: 0x61, count: 1_000_000), group: self.group
            )
            let expected = "1000000 \(TransferClient.hex(SHA256Digest.of(Array(repeating: 0x61, count: 1_000_000))))\n"
            #expect(String(decoding: reply, as: UTF8.self) == expected)
            await harness.stop()
            try await digest.close()
        }
    }

    /// A connection whose application never reads stalls only its own stream: another stream still moves
    /// 4 MiB each way intact.
    @Test(arguments: TunnelPath.all)
    func stalledReaderDoesNotStallOtherStreams(path: TunnelPath) async throws {
        try await path.withProxy { proxy in
            let echo = try await EchoServer.start(group: self.group)
            let harness = try await TunnelHarness.start(targets: [echo.port], transport: path.transport, proxy: proxy)
            let stalled = try await RawConnection.connectWithoutReading(port: harness.localPort(), group: self.group)
            // 8 MiB toward the echo: its replies fill the stalled stream's windows and buffers on the way back.
            stalled.writeAndFlush(ByteBuffer(repeating: 0x42, count: 8 * 1024 * 1024), promise: nil)
            let result = try await TransferClient.echoTransfer(
                host: "127.0.0.1", port: harness.localPort(), byteCount: 4 << 20, seed: 3, group: self.group
            )
            #expect(result.digestsMatch)
            #expect(result.bytesReceived == 4 << 20)
            #expect(try await harness.client.session.snapshot().streamCount == 1)  // the stalled one is still open, not reset
            try await stalled.close()
            await harness.stop()
            try await echo.close()
        }
    }
}
