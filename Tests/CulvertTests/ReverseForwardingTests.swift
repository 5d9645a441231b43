@testable import Culvert
import CulvertCore
import CulvertTools
import CulvertTransport
import Foundation
import NIOCore
import NIOPosix
import Testing

/// `-R`: the server listens where the client asks (within `--allow-reverse`) and carries each connection back to a
/// target on the client's side. The listeners live with the session: a new session of the same client gets the
/// ports at once, another live session is refused them.
@Suite(.serialized, .timeLimit(.minutes(2))) struct ReverseForwardingTests {
    static func startServer(allowReverse: [String]) async throws -> TunnelServer {
        try await TunnelServer.start(
            configuration: {
                var configuration = TunnelServer.Configuration(
                    listenHost: "127.0.0.1", listenPort: 0,
                    session: SessionConfiguration(token: "test-token", authenticationRequired: true),
                    allowlist: Allowlist()
                )
                configuration.reverseAllowlist = ReverseAllowlist(entries: try allowReverse.map { try ReverseAllowlist.Entry(parsing: $0) })
                return configuration
            }(),
            group: TunnelHarness.group, logger: TunnelHarness.logger
        )
    }

    static func connectClient(serverPort: Int, reverse: [ForwardSpec]) async throws -> TunnelClient {
        var configuration = TunnelClient.Configuration(
            server: ServerEndpoint(host: "127.0.0.1", port: serverPort, pathPrefix: "/culvert"),
            transportOptions: TransportOptions(logger: TunnelHarness.logger),
            session: SessionConfiguration(token: "test-token"),
            forwards: []
        )
        configuration.reverseForwards = reverse
        return try await TunnelClient.connect(configuration: configuration, group: TunnelHarness.group, logger: TunnelHarness.logger)
    }

    @Test func aConnectionToTheServersReversePortReachesTheTargetOnTheClientSide() async throws {
        let echo = try await EchoServer.start(group: TunnelHarness.group)
        let port = try await RawConnection.unusedPort(group: TunnelHarness.group)
        let server = try await Self.startServer(allowReverse: ["\(port)"])
        let client = try await Self.connectClient(
            serverPort: server.localAddress!.port!, reverse: [ForwardSpec(bindPort: port, target: .init(host: "127.0.0.1", port: echo.port))]
        )
        let answers = try await client.reverseListenersAnswered.get()
        let transfer = try await TransferClient.echoTransfer(host: "127.0.0.1", port: port, byteCount: 512 * 1024, group: TunnelHarness.group)
        await TunnelHarness(server: server, client: client).stop()
        try await echo.close()
        #expect(answers == [.listening(port: port)])
        #expect(transfer.digestsMatch)
    }

    @Test func aReverseListenerOutsideAllowReverseIsRefusedWithTheReasonAndOthersStillWork() async throws {
        let echo = try await EchoServer.start(group: TunnelHarness.group)
        let allowed = try await RawConnection.unusedPort(group: TunnelHarness.group)
        let server = try await Self.startServer(allowReverse: ["\(allowed)"])
        let client = try await Self.connectClient(
            serverPort: server.localAddress!.port!,
            reverse: [
                ForwardSpec(bindHost: "0.0.0.0", bindPort: allowed, target: .init(host: "127.0.0.1", port: echo.port)),
                ForwardSpec(bindPort: allowed, target: .init(host: "127.0.0.1", port: echo.port)),
            ]
        )
        let answers = try await client.reverseListenersAnswered.get()
        await TunnelHarness(server: server, client: client).stop()
        try await echo.close()
        #expect(answers.count == 2)
        if case .refused(let reason) = answers.first {
            #expect(reason.contains("does not allow a reverse listener on 0.0.0.0:\(allowed)") && reason.contains("--allow-reverse"), "\(reason)")
        } else {
            Issue.record("0.0.0.0 was allowed: \(answers)")
        }
        #expect(answers.last == .listening(port: allowed))
    }

    @Test func aServerWithoutAllowReverseRefusesEveryReverseListener() async throws {
        let server = try await Self.startServer(allowReverse: [])
        let client = try await Self.connectClient(
            serverPort: server.localAddress!.port!, reverse: [ForwardSpec(bindPort: 9000, target: .init(host: "127.0.0.1", port: 22))]
        )
        let answers = try await client.reverseListenersAnswered.get()
        await TunnelHarness(server: server, client: client).stop()
        #expect(answers == [.refused("the server allows no reverse listeners (start it with --allow-reverse 127.0.0.1:9000)")])
    }

    @Test func aSecondLiveSessionAskingForTheSamePortIsRefusedWithTheReason() async throws {
        let port = try await RawConnection.unusedPort(group: TunnelHarness.group)
        let server = try await Self.startServer(allowReverse: ["\(port)"])
        let forward = ForwardSpec(bindPort: port, target: .init(host: "127.0.0.1", port: 22))
        let first = try await Self.connectClient(serverPort: server.localAddress!.port!, reverse: [forward])
        let firstAnswers = try await first.reverseListenersAnswered.get()
        let second = try await Self.connectClient(serverPort: server.localAddress!.port!, reverse: [forward])
        let secondAnswers = try await second.reverseListenersAnswered.get()
        await second.shutdown(gracePeriod: .zero)
        await TunnelHarness(server: server, client: first).stop()
        #expect(firstAnswers == [.listening(port: port)])
        #expect(secondAnswers == [.refused("127.0.0.1:\(port) on the server is already a reverse listener of another session")])
    }

    @Test func aNewSessionGetsThePortsOfASessionThatEndedAtOnce() async throws {
        let echo = try await EchoServer.start(group: TunnelHarness.group)
        let port = try await RawConnection.unusedPort(group: TunnelHarness.group)
        let server = try await Self.startServer(allowReverse: ["\(port)"])
        let forward = ForwardSpec(bindPort: port, target: .init(host: "127.0.0.1", port: echo.port))
        let first = try await Self.connectClient(serverPort: server.localAddress!.port!, reverse: [forward])
        _ = try await first.reverseListenersAnswered.get()
        await first.shutdown(gracePeriod: .zero)
        let second = try await Self.connectClient(serverPort: server.localAddress!.port!, reverse: [forward])
        let answers = try await second.reverseListenersAnswered.get()
        let transfer = try await TransferClient.echoTransfer(host: "127.0.0.1", port: port, byteCount: 64 * 1024, group: TunnelHarness.group)
        await TunnelHarness(server: server, client: second).stop()
        try await echo.close()
        #expect(answers == [.listening(port: port)])
        #expect(transfer.digestsMatch)
    }

    /// The client's connection drops and it cannot reconnect for a while: the server keeps the reverse listener for
    /// the detached session, a connection made to it meanwhile waits, and it arrives whole once the session resumes.
    @Test func aReverseConnectionMadeWhileTheClientIsCutOffArrivesWholeOnceTheSessionResumes() async throws {
        let echo = try await EchoServer.start(group: TunnelHarness.group)
        let port = try await RawConnection.unusedPort(group: TunnelHarness.group)
        let server = try await Self.startServer(allowReverse: ["\(port)"])
        let relay = try await CuttingRelay.start(targetPort: server.localAddress!.port!, group: TunnelHarness.group)
        let client = try await Self.connectClient(
            serverPort: relay.port, reverse: [ForwardSpec(bindPort: port, target: .init(host: "127.0.0.1", port: echo.port))]
        )
        let answers = try await client.reverseListenersAnswered.get()
        relay.setRefusing(true)
        relay.cutAll()
        // Accepted by the listener of a session whose client is cut off: the stream's OPEN waits for the resumption.
        let transfer = Task {
            try await TransferClient.echoTransfer(host: "127.0.0.1", port: port, byteCount: 256 * 1024, group: TunnelHarness.group)
        }
        let session = client.session
        #expect(await client.changes.wait(timeout: .seconds(10)) { await session.onLoop { $0.isDetached } })
        relay.setRefusing(false)
        let result = try await transfer.value
        let resumed = try await session.submit { $0.resumptions }.get()
        await TunnelHarness(server: server, client: client).stop()
        try await relay.close()
        try await echo.close()
        #expect(answers == [.listening(port: port)])
        #expect(result.digestsMatch)
        #expect(resumed >= 1 && client.sessionsStarted == 1, "the session resumed; no new one was started")
    }

    @Test func theServerCanMakeTheClientConnectOnlyToWhatItsReverseForwardsName() async throws {
        let echo = try await EchoServer.start(group: TunnelHarness.group)
        let forward = ForwardSpec(bindPort: 9000, target: .init(host: "127.0.0.1", port: echo.port))
        let connector = ReverseTargetConnector(forwards: [forward], connectTimeout: .seconds(5))
        let loop = TunnelHarness.group.next()
        // The server names a reverse stream by the listener's address as the client asked for it.
        let channel = try await connector.connect(to: TargetAddress(host: "127.0.0.1", port: 9000), on: loop, logger: TunnelHarness.logger).get()
        #expect(channel.remoteAddress?.port == echo.port)
        try await channel.close()
        await #expect(throws: StreamOpenFailure(.notAllowed, "the client has no -R forward for 127.0.0.1:\(echo.port)")) {
            try await connector.connect(to: TargetAddress(host: "127.0.0.1", port: echo.port), on: loop, logger: TunnelHarness.logger).get()
        }
        try await echo.close()
    }
}
