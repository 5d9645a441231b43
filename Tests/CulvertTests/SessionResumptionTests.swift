import Culvert
import CulvertCore
import CulvertTools
import CulvertTransport
import NIOCore
import NIOPosix
import Testing

/// Sessions survive their transport connection: cut, they reconnect and resume without losing, repeating or
/// resetting anything; a server that no longer has the session gets a new one, with the client's listeners open
/// throughout.
@Suite(.serialized, .timeLimit(.minutes(3))) struct SessionResumptionTests {
    let group = TunnelHarness.group

    /// A relay between client and server cuts the connection 20 times, each after a random 256–768 KiB from the
    /// server, while 16 MiB go up to an echo target and back: both directions arrive intact (sha256), no stream is
    /// reset, one session throughout. Stream windows are held at 128 KiB, so that what a cut loses (and the
    /// resumption replays) is always less than what the next connection carries: every connection makes progress.
    @Test(arguments: TransportKind.allCases)
    func twentyCutsDuringATransferLoseNothing(transport: TransportKind) async throws {
        let mux = MuxConfiguration(initialStreamWindow: 128 << 10, maximumStreamWindow: 128 << 10)
        let echo = try await EchoServer.start(group: self.group)
        let server = try await TunnelHarness.startServer(allow: ["127.0.0.1:\(echo.port)"], mux: mux)
        // Polling's requests each carry little (less on a loaded machine), so its connections are cut sooner: with
        // the same 256–768 KiB as the others, 56 MiB once brought only 6 cuts.
        let cutAfter = transport == .polling ? (32 << 10)...(128 << 10) : (256 << 10)...(768 << 10)
        let relay = try await CuttingRelay.start(
            targetPort: server.localAddress!.port!, cutEachConnectionAfter: cutAfter, automaticCuts: 20,
            group: self.group
        )
        let client = try await TunnelHarness.connectClient(
            serverPort: relay.port, targets: [echo.port], transport: transport, mux: mux,
            reconnect: ReconnectBackoff(initial: .milliseconds(10), maximum: .milliseconds(50))
        )
        let localPort = client.listenerAddresses[0].port!
        let byteCount = 16 << 20
        let transfer = Task {
            try await TransferClient.echoTransfer(host: "127.0.0.1", port: localPort, byteCount: byteCount, seed: 21, group: self.group)
        }
        let result = try await transfer.value
        // The relay cuts a connection only after it carried 256–768 KiB (polling: 32–128 KiB): whether 20 cuts land
        // within 16 MiB depends on how much each connection carries, and the HTTP transports' requests get shorter
        // on a loaded machine. So more 4 MiB rounds follow (at most 10: polling's connections sometimes carry so
        // little that 4 rounds fell short) until 20 cuts have happened, each checked like the first.
        var rounds: [TransferClient.Result] = []
        while relay.cuts < 20 && rounds.count < 10 {
            rounds.append(
                try await TransferClient.echoTransfer(
                    host: "127.0.0.1", port: localPort, byteCount: 4 << 20, seed: 22 + UInt64(rounds.count), group: self.group
                )
            )
        }
        #expect(relay.cuts >= 20)
        #expect(result.bytesReceived == byteCount)
        #expect(result.digestsMatch)
        #expect(rounds.allSatisfy { $0.bytesReceived == 4 << 20 && $0.digestsMatch })
        #expect(try await client.session.snapshot().statistics.streamsReset == 0)
        #expect(client.sessionsStarted == 1)
        if transport == .websocket || transport == .connect {
            // Each cut drops the one connection: the session must have been resumed (the HTTP transports may
            // also ride out a cut by retrying their requests).
            #expect(try await client.session.snapshot().resumptions >= 1)
        }
        await client.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await relay.close()
        try await echo.close()
    }

    /// The server restarts: the client's session ends, the client starts a new one when the server is back, and
    /// its local listener (same port) carries new connections again.
    @Test func serverRestartGetsANewSessionAndTheListenerStaysOpen() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let first = try await TunnelHarness.startServer(allow: ["127.0.0.1:\(echo.port)"])
        let port = first.localAddress!.port!
        let client = try await TunnelHarness.connectClient(serverPort: port, targets: [echo.port])
        let localPort = client.listenerAddresses[0].port!
        #expect(try await TransferClient.echoTransfer(host: "127.0.0.1", port: localPort, byteCount: 100_000, group: self.group).digestsMatch)

        await first.shutdown(gracePeriod: .zero)
        #expect(await client.changes.wait(timeout: .seconds(20)) { !client.isConnected })
        let second = try await TunnelServer.start(
            configuration: .init(
                listenHost: "127.0.0.1", listenPort: port,
                session: SessionConfiguration(token: "test-token"),
                allowlist: Allowlist(entries: [try Allowlist.Entry(parsing: "127.0.0.1:\(echo.port)")])
            ),
            group: self.group, logger: TunnelHarness.logger
        )
        #expect(await client.changes.wait(timeout: .seconds(20)) { client.sessionsStarted >= 2 })
        #expect(client.sessionsStarted == 2)
        #expect(client.listenerAddresses[0].port == localPort)
        // The live status's totals keep the ended session's bytes: its rate never drops to 0 at a new session.
        let afterFirst = await client.liveStatus(measuringRoundTrip: false)
        #expect(afterFirst.bytesSent >= 100_000 && afterFirst.bytesReceived >= 100_000)
        #expect(try await TransferClient.echoTransfer(host: "127.0.0.1", port: localPort, byteCount: 100_000, group: self.group).digestsMatch)
        let afterSecond = await client.liveStatus(measuringRoundTrip: false)
        #expect(afterSecond.bytesSent >= afterFirst.bytesSent + 100_000)
        await client.shutdown(gracePeriod: .zero)
        await second.shutdown(gracePeriod: .zero)
        try await echo.close()
    }

    /// A client that comes back after the server's grace period is refused: the server freed the session and its
    /// streams; the client starts a new session, and the stream that was open is closed (lost), not hung.
    @Test func resumingAfterTheGracePeriodStartsANewSession() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let server = try await TunnelServer.start(
            configuration: .init(
                listenHost: "127.0.0.1", listenPort: 0,
                session: SessionConfiguration(token: "test-token", detachedGracePeriod: .milliseconds(300)),
                allowlist: Allowlist(entries: [try Allowlist.Entry(parsing: "127.0.0.1:\(echo.port)")])
            ),
            group: self.group, logger: TunnelHarness.logger
        )
        let relay = try await CuttingRelay.start(targetPort: server.localAddress!.port!, group: self.group)
        let client = try await TunnelHarness.connectClient(serverPort: relay.port, targets: [echo.port])
        let localPort = client.listenerAddresses[0].port!
        let open = try await RawConnection.echoAndStayOpen(port: localPort, byteCount: 1000, group: self.group)

        relay.setRefusing(true)
        relay.cutAll()
        #expect(await server.changes.wait(timeout: .seconds(20)) { server.activeSessions == 0 })
        relay.setRefusing(false)
        #expect(await client.changes.wait(timeout: .seconds(30)) { client.sessionsStarted >= 2 })
        #expect(client.sessionsStarted == 2)
        try await open.closeFuture.get()
        #expect(try await TransferClient.echoTransfer(host: "127.0.0.1", port: localPort, byteCount: 100_000, group: self.group).digestsMatch)
        await client.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await relay.close()
        try await echo.close()
    }

    /// The path silently stops carrying anything (no close, no reset): keepalive declares the connection dead
    /// within its timeout, not TCP's minutes, and the session resumes on a new connection and carries on.
    @Test func keepaliveFindsASilentlyDeadConnectionAndTheSessionResumes() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let session = SessionConfiguration(
            token: "test-token", keepaliveInterval: .milliseconds(200), keepaliveTimeout: .milliseconds(300)
        )
        let server = try await TunnelServer.start(
            configuration: .init(
                listenHost: "127.0.0.1", listenPort: 0, session: session,
                allowlist: Allowlist(entries: [try Allowlist.Entry(parsing: "127.0.0.1:\(echo.port)")])
            ),
            group: self.group, logger: TunnelHarness.logger
        )
        let relay = try await CuttingRelay.start(targetPort: server.localAddress!.port!, group: self.group)
        let client = try await TunnelClient.connect(
            configuration: .init(
                server: ServerEndpoint(host: "127.0.0.1", port: relay.port),
                session: session,
                forwards: [ForwardSpec(bindPort: 0, target: .init(host: "127.0.0.1", port: echo.port))]
            ),
            group: self.group, logger: TunnelHarness.logger
        )
        let localPort = client.listenerAddresses[0].port!
        relay.blackHoleAll()
        let result = try await TransferClient.echoTransfer(host: "127.0.0.1", port: localPort, byteCount: 1_000_000, group: self.group)
        #expect(result.digestsMatch)
        #expect(try await client.session.snapshot().resumptions >= 1)
        #expect(client.sessionsStarted == 1)
        await client.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await relay.close()
        try await echo.close()
    }

    /// A live session moves from WebSocket to polling and back in the middle of a 16 MiB transfer: the new
    /// connection uses the other transport, and every byte arrives once, in order.
    @Test func theSessionMovesToAnotherTransportMidTransfer() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let server = try await TunnelHarness.startServer(allow: ["127.0.0.1:\(echo.port)"])
        let client = try await TunnelHarness.connectClient(serverPort: server.localAddress!.port!, targets: [echo.port])
        let localPort = client.listenerAddresses[0].port!
        // Moved once the data flows (the first echo is back), not after a guessed delay.
        let (flowing, dataFlows) = AsyncStream<Void>.makeStream()
        let transfer = Task {
            defer { dataFlows.finish() }
            return try await TransferClient.echoTransfer(
                host: "127.0.0.1", port: localPort, byteCount: 16 << 20, seed: 4, onFirstEcho: { dataFlows.finish() }, group: self.group
            )
        }
        for await _ in flowing {}
        let session = client.session
        client.switchTransport(to: .polling)
        #expect(await client.changes.wait(timeout: .seconds(20)) { await session.onLoop { $0.transportKind == .polling } })
        client.switchTransport(to: .websocket)
        let result = try await transfer.value
        #expect(result.digestsMatch)
        #expect(result.bytesReceived == 16 << 20)
        #expect(try await client.session.snapshot().resumptions >= 1)
        #expect(try await client.session.snapshot().statistics.streamsReset == 0)
        await client.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }

    /// A transport whose connection keeps dropping (three times within the window) is given up for the next
    /// fallback; the session moves to it and carries on.
    @Test func aTransportThatKeepsFailingIsGivenUpForTheFallback() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let server = try await TunnelHarness.startServer(allow: ["127.0.0.1:\(echo.port)"])
        let relay = try await CuttingRelay.start(targetPort: server.localAddress!.port!, group: self.group)
        var configuration = TunnelClient.Configuration(
            server: ServerEndpoint(host: "127.0.0.1", port: relay.port),
            session: SessionConfiguration(token: "test-token"),
            forwards: [ForwardSpec(bindPort: 0, target: .init(host: "127.0.0.1", port: echo.port))],
            reconnect: ReconnectBackoff(initial: .milliseconds(20))
        )
        configuration.fallbacks = [.polling]
        let client = try await TunnelClient.connect(configuration: configuration, group: self.group, logger: TunnelHarness.logger)
        let session = client.session
        for cut in 1...3 {
            relay.cutAll()
            #expect(await client.changes.wait(timeout: .seconds(20)) { await session.onLoop { $0.resumptions >= cut } })
        }
        #expect(client.currentTransport == .polling)
        #expect(try await client.session.snapshot().transportKind == .polling)
        let result = try await TransferClient.echoTransfer(
            host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: 1_000_000, group: self.group
        )
        #expect(result.digestsMatch)
        await client.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await relay.close()
        try await echo.close()
    }
}
