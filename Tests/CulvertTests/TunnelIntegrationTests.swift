import Culvert
import CulvertCore
import CulvertTools
import CulvertTransport
import NIOCore
import NIOPosix
import Testing

/// End-to-end over real sockets on 127.0.0.1: client listener → tunnel (WebSocket) → server → target.
@Suite(.serialized, .timeLimit(.minutes(2))) struct TunnelIntegrationTests {
    let group = TunnelHarness.group

    /// 64 MiB up and 64 MiB back through one stream arrive byte for byte (sha256 of each direction).
    @Test func sixtyFourMiBEachWayArriveIntact() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let harness = try await TunnelHarness.start(targets: [echo.port])
        let result = try await TransferClient.echoTransfer(
            host: "127.0.0.1", port: harness.localPort(), byteCount: 64 * 1024 * 1024, seed: 7, group: self.group
        )
        #expect(result.bytesReceived == 64 * 1024 * 1024)
        #expect(result.sentDigest == result.receivedDigest)
        await harness.stop()
        try await echo.close()
    }

    /// 100 concurrent connections over three -L forwards all complete intact, over exactly one TCP connection
    /// between client and server.
    @Test func hundredConnectionsOverThreeForwardsShareOneTunnelConnection() async throws {
        var echoes: [EchoServer] = []
        for _ in 0..<3 { echoes.append(try await EchoServer.start(group: self.group)) }
        let harness = try await TunnelHarness.start(targets: echoes.map(\.port))
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
        #expect(harness.server.acceptedConnections == 1)
        #expect(harness.client.session.statistics.streamsOpened == 100)
        await harness.stop()
        for echo in echoes { try await echo.close() }
    }

    /// 200 concurrent streams doing one-byte round trips all keep going: no stream's ping is lost or stuck.
    @Test func twoHundredConcurrentPingPongStreamsAllComplete() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let harness = try await TunnelHarness.start(targets: [echo.port])
        let rate = try await LoadGenerator.concurrentRoundTrips(
            port: harness.localPort(), streams: 200, seconds: 1, group: self.group
        )
        #expect(rate > 0)
        await harness.stop()
        try await echo.close()
    }

    /// Peers with different frame and window settings interoperate: each sends frames no larger than the other
    /// accepts, and small windows still move every byte.
    @Test func peersWithDifferentLimitsInteroperate() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let server = try await TunnelHarness.startServer(
            allow: ["127.0.0.1:\(echo.port)"],
            mux: MuxConfiguration(initialStreamWindow: 8 * 1024, maximumStreamWindow: 16 * 1024, maximumDataPayload: 4 * 1024)
        )
        let client = try await TunnelHarness.connectClient(serverPort: server.localAddress!.port!, targets: [echo.port])
        let result = try await TransferClient.echoTransfer(
            host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: 2 * 1024 * 1024, group: self.group
        )
        #expect(result.digestsMatch)
        await client.shutdown(gracePeriod: .milliseconds(100))
        await server.shutdown(gracePeriod: .milliseconds(100))
        try await echo.close()
    }

    /// A client that half-closes still receives the reply the target sends after seeing the FIN.
    @Test func halfCloseStillDeliversTheReply() async throws {
        let digest = try await DigestServer.start(group: self.group)
        let harness = try await TunnelHarness.start(targets: [digest.port])
        let reply = try await RawConnection.sendThenHalfCloseAndReadAll(
            port: harness.localPort(), bytes: Array(repeating: 0x61, count: 1_000_000), group: self.group
        )
        let expected = "1000000 \(TransferClient.hex(SHA256Digest.of(Array(repeating: 0x61, count: 1_000_000))))\n"
        #expect(String(decoding: reply, as: UTF8.self) == expected)
        await harness.stop()
        try await digest.close()
    }

    /// A connection whose application never reads stalls only its own stream: another stream still moves
    /// 64 MiB each way intact.
    @Test func stalledReaderDoesNotStallOtherStreams() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let harness = try await TunnelHarness.start(targets: [echo.port])
        let stalled = try await RawConnection.connectWithoutReading(port: harness.localPort(), group: self.group)
        // 8 MiB toward the echo: its replies fill the stalled stream's windows and buffers on the way back.
        stalled.writeAndFlush(ByteBuffer(repeating: 0x42, count: 8 * 1024 * 1024), promise: nil)
        let result = try await TransferClient.echoTransfer(
            host: "127.0.0.1", port: harness.localPort(), byteCount: 64 * 1024 * 1024, seed: 3, group: self.group
        )
        #expect(result.digestsMatch)
        #expect(result.bytesReceived == 64 * 1024 * 1024)
        #expect(harness.client.session.streamCount == 1)  // the stalled one is still open, not reset
        try await stalled.close()
        await harness.stop()
        try await echo.close()
    }

    /// A target outside the allowlist is refused: the local connection closes without data, the client counts
    /// the refusal, and the tunnel goes on carrying other streams.
    @Test func refusedTargetClosesTheLocalConnectionAndTheTunnelGoesOn() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let server = try await TunnelHarness.startServer(allow: ["127.0.0.1:\(echo.port)"])
        let client = try await TunnelHarness.connectClient(
            serverPort: server.localAddress!.port!, targets: [echo.port + 1 == 65536 ? 1 : echo.port + 1, echo.port]
        )
        let reply = try await RawConnection.sendThenHalfCloseAndReadAll(
            port: client.listenerAddresses[0].port!, bytes: [1, 2, 3], group: self.group
        )
        #expect(reply.isEmpty)
        #expect(client.session.statistics.streamsRefused == 1)
        let result = try await TransferClient.echoTransfer(
            host: "127.0.0.1", port: client.listenerAddresses[1].port!, byteCount: 100_000, group: self.group
        )
        #expect(result.digestsMatch)
        await client.shutdown(gracePeriod: .milliseconds(100))
        await server.shutdown(gracePeriod: .milliseconds(100))
        try await echo.close()
    }

    /// A wrong token fails the client's connect with an authentication error before any listener opens.
    @Test func wrongTokenFailsTheClient() async throws {
        let server = try await TunnelHarness.startServer(token: "right", allow: ["127.0.0.1:1"])
        let error = await #expect(throws: SessionError.self) {
            _ = try await TunnelHarness.connectClient(serverPort: server.localAddress!.port!, token: "wrong", targets: [1])
        }
        #expect(error?.isAuthenticationFailure == true)
        await server.shutdown(gracePeriod: .zero)
    }

    /// A server that is down gives an 'unreachable' error naming the address.
    @Test func unreachableServerIsReported() async throws {
        let port = try await RawConnection.unusedPort(group: self.group)
        let error = await #expect(throws: SessionError.self) {
            _ = try await TunnelHarness.connectClient(serverPort: port, targets: [1])
        }
        guard case .transport(.unreachable(let endpoint, let reason))? = error else {
            Issue.record("got \(String(describing: error))")
            return
        }
        #expect(endpoint == "127.0.0.1:\(port)" && reason == "connection refused")
    }

    /// A wrong path prefix is answered 404 and reported with a hint about --path.
    @Test func wrongPathIsReportedWithAHint() async throws {
        let server = try await TunnelHarness.startServer(allow: ["127.0.0.1:1"])
        let error = await #expect(throws: SessionError.self) {
            _ = try await TunnelHarness.connectClient(serverPort: server.localAddress!.port!, targets: [1], path: "/nope")
        }
        if case .transport(.unexpectedStatus(.websocket, 404, _, let hint))? = error {
            #expect(hint.contains("--path"))
        } else {
            Issue.record("got \(String(describing: error))")
        }
        await server.shutdown(gracePeriod: .zero)
    }

    /// A forward on a port that is in use fails with 'address already in use'.
    @Test func forwardPortInUseIsReported() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let server = try await TunnelHarness.startServer(allow: ["127.0.0.1:\(echo.port)"])
        let error = await #expect(throws: ForwardingError.self) {
            _ = try await TunnelClient.connect(
                configuration: .init(
                    server: ServerEndpoint(host: "127.0.0.1", port: server.localAddress!.port!),
                    session: SessionConfiguration(token: "test-token"),
                    forwards: [ForwardSpec(bindPort: echo.port, target: .init(host: "127.0.0.1", port: echo.port))]
                ),
                group: self.group,
                logger: TunnelHarness.logger
            )
        }
        if case .bindFailed(_, let reason)? = error {
            #expect(reason.contains("address already in use"))
        } else {
            Issue.record("got \(String(describing: error))")
        }
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }

    /// Server shutdown sends GOAWAY: the client's session ends cleanly rather than by a dropped connection.
    @Test func serverShutdownEndsTheClientSessionWithGoAway() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let harness = try await TunnelHarness.start(targets: [echo.port])
        await harness.server.shutdown(gracePeriod: .milliseconds(100))
        let reason = try await harness.client.ended.get()
        if case .shutdown = reason {} else { Issue.record("client session ended with \(reason)") }
        await harness.client.shutdown(gracePeriod: .zero)
        try await echo.close()
    }
}
