import Culvert
import CulvertCore
import CulvertTools
import CulvertTransport
import NIOCore
import NIOPosix
import Testing

/// End-to-end over real sockets on 127.0.0.1: client listener → tunnel (WebSocket) → server → target. The
/// transfer suite for every transport is ``TransportMatrixTests``.
@Suite(.serialized, .timeLimit(.minutes(2))) struct TunnelIntegrationTests {
    let group = TunnelHarness.group

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

    /// Streams that moved bulk data (so their windows grew) and then sit idle, still open, keep their credit;
    /// 200 streams opened after them still all get credit and complete their round trips.
    @Test func idleBulkStreamsDoNotStarveNewStreams() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let harness = try await TunnelHarness.start(targets: [echo.port])
        var idle: [any Channel] = []
        for _ in 0..<3 {
            idle.append(try await RawConnection.echoAndStayOpen(port: harness.localPort(), byteCount: 8 << 20, group: self.group))
        }
        let rate = try await LoadGenerator.concurrentRoundTrips(
            port: harness.localPort(), streams: 200, seconds: 0.5, group: self.group
        )
        #expect(rate > 0)
        #expect(try await harness.client.session.snapshot().streamCount >= 3)
        for channel in idle { try await channel.close() }
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
        #expect(try await client.session.snapshot().statistics.streamsRefused == 1)
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

    /// Server shutdown sends GOAWAY: the client's session ends cleanly rather than by a dropped connection (and is
    /// not resumed: the client will start a new session once a server is back).
    @Test func serverShutdownEndsTheClientSessionWithGoAway() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let harness = try await TunnelHarness.start(targets: [echo.port])
        let session = harness.client.session
        await harness.server.shutdown(gracePeriod: .milliseconds(100))
        let reason = try await session.ended.get()
        if case .shutdown = reason {} else { Issue.record("client session ended with \(reason)") }
        await harness.client.shutdown(gracePeriod: .zero)
        try await echo.close()
    }
}
