import Culvert
import CulvertCore
import CulvertTools
import CulvertTransport
import NIOCore
import NIOPosix
import Testing

/// A server with named users (`--users`): each user reaches its own targets only, rules reloaded take effect for
/// new sessions and streams while open ones go on, and a user's session limit holds.
@Suite struct NamedUsersTests {
    let group = MultiThreadedEventLoopGroup.singleton

    static func users(_ text: String) throws -> [String: UserAccount] { try UsersFile.parse(text, file: "users.toml") }

    func startServer(users: [String: UserAccount]) async throws -> TunnelServer {
        var configuration = TunnelServer.Configuration(
            listenHost: "127.0.0.1", listenPort: 0, session: SessionConfiguration(token: nil), allowlist: Allowlist()
        )
        configuration.users = users
        return try await TunnelServer.start(configuration: configuration, group: self.group, logger: TunnelHarness.logger)
    }

    func connect(_ server: TunnelServer, user: String, token: String, targets: [Int], refusalWait: TimeAmount = .seconds(120)) async throws -> TunnelClient {
        var session = SessionConfiguration(token: token)
        session.user = user
        var configuration = TunnelClient.Configuration(
            server: ServerEndpoint(host: "127.0.0.1", port: server.localAddress!.port!),
            transport: .websocket,
            transportOptions: TransportOptions(connectTimeout: .seconds(5), logger: TunnelHarness.logger),
            session: session,
            forwards: targets.map { ForwardSpec(bindPort: 0, target: .init(host: "127.0.0.1", port: $0)) }
        )
        configuration.maximumRefusalWait = refusalWait
        return try await TunnelClient.connect(configuration: configuration, group: self.group, logger: TunnelHarness.logger)
    }

    /// Whether an echo through `client`'s `index`th forward comes back whole (false: the stream was refused).
    func echoes(_ client: TunnelClient, _ index: Int) async throws -> Bool {
        let reply = try await RawConnection.sendThenHalfCloseAndReadAll(
            port: client.listenerAddresses[index].port!, bytes: Array("ping \(index)".utf8), group: self.group
        )
        return reply == Array("ping \(index)".utf8)
    }

    @Test func eachUserReachesItsOwnTargetsOnly() async throws {
        let alicesTarget = try await EchoServer.start(group: self.group)
        let bobsTarget = try await EchoServer.start(group: self.group)
        let server = try await self.startServer(users: try Self.users("""
            [users.alice]
            token = "alices-token"
            allow = ["127.0.0.1:\(alicesTarget.port)"]
            [users.bob]
            token-hash = "\(TokenVerifier(token: "bobs-token").hashText)"
            allow = ["127.0.0.1:\(bobsTarget.port)"]
            """))
        let targets = [alicesTarget.port, bobsTarget.port]
        let alice = try await self.connect(server, user: "alice", token: "alices-token", targets: targets)
        let bob = try await self.connect(server, user: "bob", token: "bobs-token", targets: targets)
        #expect(try await self.echoes(alice, 0))
        #expect(try await !self.echoes(alice, 1))
        #expect(try await !self.echoes(bob, 0))
        #expect(try await self.echoes(bob, 1))
        #expect(try await alice.session.snapshot().statistics.streamsRefused == 1)
        #expect(try await bob.session.snapshot().statistics.streamsRefused == 1)
        await alice.shutdown(gracePeriod: .zero)
        await bob.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await alicesTarget.close()
        try await bobsTarget.close()
    }

    /// Rules reloaded without a user: the user's new sessions are refused like a wrong token and its open session's
    /// new streams are refused, while the other user's open stream goes on moving data.
    @Test func aUserRemovedByAReloadIsRefusedWhileTheOtherUsersSessionGoesOn() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let allow = "allow = [\"127.0.0.1:\(echo.port)\"]"
        let server = try await self.startServer(users: try Self.users("[users.alice]\ntoken = \"a\"\n\(allow)\n[users.bob]\ntoken = \"b\"\n\(allow)\n"))
        let alice = try await self.connect(server, user: "alice", token: "a", targets: [echo.port])
        let bob = try await self.connect(server, user: "bob", token: "b", targets: [echo.port])
        let transfer = Task { try await TransferClient.echoTransfer(host: "127.0.0.1", port: bob.listenerAddresses[0].port!, byteCount: 4 << 20, group: self.group) }

        server.updateAccessRules(AccessRules(allowlist: Allowlist(), users: try Self.users("[users.bob]\ntoken = \"b\"\n\(allow)\n")))

        let refusal = await #expect(throws: SessionError.self) { _ = try await self.connect(server, user: "alice", token: "a", targets: [echo.port]) }
        #expect(refusal?.isAuthenticationFailure == true)
        #expect(try await !self.echoes(alice, 0))
        #expect(try await transfer.value.digestsMatch)
        #expect(try await self.echoes(bob, 0))
        await alice.shutdown(gracePeriod: .zero)
        await bob.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }

    /// A user at its `max-sessions` is refused, with the reason; once one of its sessions ends it gets in again.
    @Test func aUserAtItsSessionLimitIsRefusedUntilOneOfItsSessionsEnds() async throws {
        let server = try await self.startServer(users: try Self.users("[users.alice]\ntoken = \"a\"\nmax-sessions = 1\n"))
        let first = try await self.connect(server, user: "alice", token: "a", targets: [])
        #expect(server.accessControl.sessions(of: "alice") == 1)
        let refusal = await #expect(throws: SessionError.self) {
            _ = try await self.connect(server, user: "alice", token: "a", targets: [], refusalWait: .zero)
        }
        #expect(refusal.map { "\($0)" }?.contains("user alice has its maximum of 1 session") == true, "\(String(describing: refusal))")
        await first.shutdown(gracePeriod: .zero)
        #expect(await server.changes.wait(timeout: .seconds(10)) { server.accessControl.sessions(of: "alice") == 0 })
        let again = try await self.connect(server, user: "alice", token: "a", targets: [], refusalWait: .zero)
        await again.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
    }

    /// A user's `allow-reverse` says where its reverse listeners may open; another user without one gets the
    /// server's `--allow-reverse` (here: none) and is refused with the reason.
    @Test func eachUsersReverseListenersFollowItsOwnAllowReverse() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let port = try await RawConnection.unusedPort(group: self.group)
        let server = try await self.startServer(users: try Self.users("""
            [users.alice]
            token = "a"
            allow-reverse = ["127.0.0.1:\(port)"]
            [users.bob]
            token = "b"
            """))
        func connect(_ user: String, _ token: String) async throws -> TunnelClient {
            var session = SessionConfiguration(token: token)
            session.user = user
            var configuration = TunnelClient.Configuration(
                server: ServerEndpoint(host: "127.0.0.1", port: server.localAddress!.port!), transport: .websocket,
                transportOptions: TransportOptions(logger: TunnelHarness.logger), session: session, forwards: []
            )
            configuration.reverseForwards = [ForwardSpec(bindPort: port, target: .init(host: "127.0.0.1", port: echo.port))]
            return try await TunnelClient.connect(configuration: configuration, group: self.group, logger: TunnelHarness.logger)
        }
        let bob = try await connect("bob", "b")
        let bobsAnswers = try await bob.reverseListenersAnswered.get()
        guard case .refused(let reason)? = bobsAnswers.first else { Issue.record("bob's listener not refused: \(bobsAnswers)"); return }
        #expect(reason.contains("allows no reverse listeners"), "\(reason)")
        let alice = try await connect("alice", "a")
        #expect(try await alice.reverseListenersAnswered.get() == [.listening(port: port)])
        #expect(try await TransferClient.echoTransfer(host: "127.0.0.1", port: port, byteCount: 64 * 1024, group: self.group).digestsMatch)
        await alice.shutdown(gracePeriod: .zero)
        await bob.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }
}
