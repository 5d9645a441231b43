@testable import Culvert
import CulvertCore
import CulvertTools
import CulvertTransport
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

/// A server that faces the internet: its limits hold, going over one gets a clear refusal, and everyone else keeps
/// being served — through idle and slow connections, wrong-token floods and stream floods.
@Suite(.serialized, .timeLimit(.minutes(3))) struct ServerLimitsTests {
    let group = TunnelHarness.group

    private func startServer(
        echoPort: Int,
        maximumSessions: Int = 1024,
        authenticationFailuresPerMinute: Int = 10,
        maximumStreams: Int = 4096,
        http: HTTPTransportServerSettings = .init(),
        allowAny: Bool = false
    ) async throws -> TunnelServer {
        var configuration = TunnelServer.Configuration(
            listenHost: "127.0.0.1", listenPort: 0,
            session: SessionConfiguration(token: "right", mux: MuxConfiguration(maximumStreams: maximumStreams)),
            allowlist: Allowlist(entries: [try Allowlist.Entry(parsing: "127.0.0.1:\(echoPort)")], allowsAny: allowAny),
            http: http
        )
        configuration.maximumSessions = maximumSessions
        configuration.authenticationFailuresPerMinute = authenticationFailuresPerMinute
        return try await TunnelServer.start(configuration: configuration, group: self.group, logger: TunnelHarness.logger)
    }

    private func connect(
        _ server: TunnelServer, echoPort: Int, token: String = "right", transport: TransportKind = .websocket,
        sourceAddress: String? = nil, refusalWait: TimeAmount = .zero, throughPort: Int? = nil
    ) async throws -> TunnelClient {
        var options = TransportOptions(connectTimeout: .seconds(5), logger: TunnelHarness.logger)
        options.sourceAddress = try sourceAddress.map { try SocketAddress(ipAddress: $0, port: 0) }
        var configuration = TunnelClient.Configuration(
            server: ServerEndpoint(host: "127.0.0.1", port: throughPort ?? server.localAddress!.port!), transport: transport,
            transportOptions: options, session: SessionConfiguration(token: token),
            forwards: [ForwardSpec(bindPort: 0, target: .init(host: "127.0.0.1", port: echoPort))]
        )
        // These tests look at the refusal itself, not at the client's waiting through it (which has its own test).
        configuration.maximumRefusalWait = refusalWait
        return try await TunnelClient.connect(configuration: configuration, group: self.group, logger: TunnelHarness.logger)
    }

    /// A client session refused by the server (here: after too many failed authentications) is freed once it
    /// ended: a client that keeps retrying against a server that refuses it must not grow.
    @Test func refusedClientSessionsAreFreed() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let server = try await self.startServer(echoPort: echo.port, authenticationFailuresPerMinute: 5)
        let endpoint = ServerEndpoint(host: "127.0.0.1", port: server.localAddress!.port!)
        var options = TransportOptions(connectTimeout: .seconds(5), logger: TunnelHarness.logger)
        options.sourceAddress = try SocketAddress(ipAddress: "127.0.0.2", port: 0)
        var sessions: [WeakSession] = []
        for _ in 0..<100 {
            let eventLoop = self.group.next()
            let connection = try await ClientTransports.make(.websocket, options: options).connectBound(to: endpoint, on: eventLoop).get()
            // Only a weak reference leaves the loop, so that nothing here keeps the session alive.
            let (established, weak) = try await eventLoop.submit {
                let session = TunnelSession(role: .client, transport: connection.value, configuration: SessionConfiguration(token: "wrong"),
                                            logger: TunnelHarness.logger)
                session.start()
                return (session.established, WeakSession(session))
            }.get()
            _ = try? await established.get()
            sessions.append(weak)
        }
        for _ in 0..<100 where sessions.contains(where: { $0.session != nil }) { try await Task.sleep(for: .milliseconds(20)) }
        #expect(sessions.filter { $0.session != nil }.count == 0)
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }

    @Test func sessionsPastTheMaximumAreRefusedWithTheReason() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let server = try await self.startServer(echoPort: echo.port, maximumSessions: 2)
        let first = try await self.connect(server, echoPort: echo.port)
        let second = try await self.connect(server, echoPort: echo.port, transport: .polling)
        for transport in [TransportKind.websocket, .chunked] {
            await #expect {
                _ = try await self.connect(server, echoPort: echo.port, transport: transport)
            } throws: { error in
                "\(error)".contains("maximum of 2 sessions")
            }
        }
        // The two admitted sessions still carry data.
        for client in [first, second] {
            let transfer = try await TransferClient.echoTransfer(
                host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: 1 << 20, group: self.group
            )
            #expect(transfer.digestsMatch)
        }
        await first.shutdown(gracePeriod: .zero)
        await second.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }

    /// At the session limit, a session whose connection dropped is resumed, not refused: the session it resumes
    /// holds its place. A new session is still refused meanwhile.
    @Test(arguments: [TransportKind.websocket, .connect])
    func aSessionWaitingForItsClientAtTheLimitIsResumedNotRefused(transport: TransportKind) async throws {
        let echo = try await EchoServer.start(group: self.group)
        let server = try await self.startServer(echoPort: echo.port, maximumSessions: 1)
        let relay = try await CuttingRelay.start(targetPort: server.localAddress!.port!, group: self.group)
        let client = try await self.connect(server, echoPort: echo.port, transport: transport, throughPort: relay.port)
        let held = try await CommandLineTests.EchoConnection(port: client.listenerAddresses[0].port!, group: self.group)
        #expect(try await held.echo("before") == "before")
        relay.setRefusing(true)
        relay.cutAll()
        #expect(await server.changes.wait(timeout: .seconds(10)) { server.sessionsWaitingForClient == 1 })
        await #expect {
            _ = try await self.connect(server, echoPort: echo.port, transport: transport)
        } throws: { error in
            "\(error)".contains("maximum of 1 sessions")
        }
        relay.setRefusing(false)
        #expect(await client.changes.wait(timeout: .seconds(20)) { ((try? await client.session.snapshot().resumptions) ?? 0) >= 1 && client.isConnected })
        #expect(try await held.echo("after the drop") == "after the drop")
        #expect(client.sessionsStarted == 1)
        try await held.channel.close()
        await client.shutdown(gracePeriod: .zero)
        try await relay.close()
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }

    /// A client turned away at its first connection because the server is busy (here: at its session limit; a
    /// throttled address gets the same GOAWAY treatment) does not give up: it waits its backoff and tries again, and
    /// connects once there is room. The wait is bounded: past `maximumRefusalWait` the refusal is the error.
    @Test(.timeLimit(.minutes(1))) func aClientTurnedAwayForNowWaitsAndConnectsOnceThereIsRoom() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let server = try await self.startServer(echoPort: echo.port, maximumSessions: 1)
        let first = try await self.connect(server, echoPort: echo.port)
        var configuration = TunnelClient.Configuration(
            server: ServerEndpoint(host: "127.0.0.1", port: server.localAddress!.port!),
            transportOptions: TransportOptions(connectTimeout: .seconds(5), logger: TunnelHarness.logger),
            session: SessionConfiguration(token: "right"),
            forwards: [ForwardSpec(bindPort: 0, target: .init(host: "127.0.0.1", port: echo.port))]
        )
        configuration.maximumRefusalWait = .seconds(30)
        let waiting = Task { try await TunnelClient.connect(configuration: configuration, group: self.group, logger: TunnelHarness.logger) }
        // The second client has been refused at least once before the first leaves.
        // (Each refusal starts and ends a session on the server, which is what wakes this.)
        #expect(await server.changes.wait(timeout: .seconds(30)) { server.activeSessions >= 1 && server.acceptedConnections >= 2 })
        await first.shutdown(gracePeriod: .zero)
        let second = try await waiting.value
        let transfer = try await TransferClient.echoTransfer(
            host: "127.0.0.1", port: second.listenerAddresses[0].port!, byteCount: 1 << 20, group: self.group
        )
        #expect(transfer.digestsMatch)
        await second.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }

    /// 10,000 wrong-token attempts from one address against a `culvert server` process: after the limit they are
    /// refused before any handshake work, the server stays responsive (a client from another address with the right
    /// token moves data meanwhile, and after), and its resident memory stays flat.
    @Test func tenThousandWrongTokenAttemptsLeaveTheServerResponsive() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let (server, port) = try await Self.startServerProcess(echoPort: echo.port, ["--auth-failures-per-minute", "5"])
        defer { server.stop() }
        let endpoint = ServerEndpoint(host: "127.0.0.1", port: port)
        let refusedUnheard = NIOLockedValueBox(0)
        let wrongToken = NIOLockedValueBox(0)
        var attacker = TransportOptions(connectTimeout: .seconds(5), logger: TunnelHarness.logger)
        attacker.sourceAddress = try SocketAddress(ipAddress: "127.0.0.2", port: 0)
        let attackerOptions = attacker
        /// `count` attempts from 10 workers, while a client from another address with the right token moves 16 MiB.
        func attack(_ count: Int, legitimateBytes: Int) async throws {
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                for _ in 0..<10 {
                    tasks.addTask {
                        for _ in 0..<count / 10 {
                            let text = await Self.handshakeError(endpoint: endpoint, token: "wrong", options: attackerOptions, group: self.group)
                            if text.contains("earlier attempts from") {
                                refusedUnheard.withLockedValue { $0 += 1 }
                            } else if text.contains("token") {
                                wrongToken.withLockedValue { $0 += 1 }
                            } else {
                                Issue.record("unexpected outcome of a wrong-token attempt: \(text)")
                            }
                        }
                    }
                }
                try await Self.moveData(to: endpoint, echoPort: echo.port, bytes: legitimateBytes, group: self.group)
                try await tasks.waitForAll()
            }
        }
        // The first 1,000 (beside a 16 MiB transfer) bring the server to its working size; the other 9,000 (beside a
        // 1 MiB one) must not grow it.
        let started = ContinuousClock.now
        try await attack(1000, legitimateBytes: 16 << 20)
        let before = Self.residentMiB(pid: server.pid)
        try await attack(9000, legitimateBytes: 1 << 20)
        #expect(refusedUnheard.withLockedValue { $0 } + wrongToken.withLockedValue { $0 } == 10_000)
        // Attempts count from their start, so however many run at once, no more proofs are checked than the limit:
        // 5 in each minute the attack lasted (on a loaded machine it can outlast the first).
        let minutes = Int(((ContinuousClock.now - started) / .seconds(60)).rounded(.up))
        #expect(wrongToken.withLockedValue { $0 } <= 5 * max(1, minutes))
        let after = Self.residentMiB(pid: server.pid)
        #expect(after - before < 8, "the server's resident memory grew from \(before) to \(after) MiB")
        try await Self.moveData(to: endpoint, echoPort: echo.port, bytes: 1 << 20, group: self.group)
        try await echo.close()
    }

    /// The upload attack of a stranger without the token against a `culvert server` process: 32 connection ids,
    /// 4 POSTs each, every one a single DATA record announcing almost 16 MiB (2 GiB offered in all), while a client
    /// with the token moves 16 MiB. The server refuses each upload at once (it buffered them whole, +2 GiB), the
    /// client's data arrives intact, and the server's resident memory grows by less than 32 MiB.
    @Test func unauthenticatedUploadsDoNotPinMemoryWhileAClientMovesData() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let (server, port) = try await Self.startServerProcess(echoPort: echo.port)
        defer { server.stop() }
        let endpoint = ServerEndpoint(host: "127.0.0.1", port: port)
        // Brings the server to its working size first.
        try await Self.moveData(to: endpoint, echoPort: echo.port, bytes: 1 << 20, group: self.group)
        let before = Self.residentMiB(pid: server.pid)
        let offeredPerUpload = 16 << 20
        // The attacker keeps every upload connection open once it has written what the server took.
        let held = try await withThrowingTaskGroup(of: [any Channel].self) { tasks in
            for _ in 0..<32 {
                tasks.addTask {
                    let open = try await RawConnection.exchange(
                        port: port, request: "POST /culvert/open?t=polling HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                        group: self.group
                    )
                    let id = try #require(open.split(separator: "\r\n\r\n").last?.split(separator: "\n").first.map(String.init))
                    var channels: [any Channel] = []
                    for _ in 0..<4 {
                        channels.append(try await Self.offerUpload(port: port, connectionID: id, bytes: offeredPerUpload, group: self.group))
                    }
                    return channels
                }
            }
            tasks.addTask {
                try await Self.moveData(to: endpoint, echoPort: echo.port, bytes: 16 << 20, group: self.group)
                return []
            }
            return try await tasks.reduce(into: []) { $0 += $1 }
        }
        let during = Self.residentMiB(pid: server.pid)
        for channel in held { try? await channel.close() }
        #expect(during - before < 32, "with the uploads held open the server's resident memory grew from \(before) to \(during) MiB")
        try await echo.close()
    }

    /// A stranger's POST /up of one DATA record of `bytes`, written as fast as the server takes it, until it is all
    /// written or the server closes the connection; returns the connection, left open.
    private static func offerUpload(port: Int, connectionID: String, bytes: Int, group: any EventLoopGroup) async throws -> any Channel {
        let channel = try await ClientBootstrap(group: group).connect(host: "127.0.0.1", port: port).get()
        var head = ByteBuffer(string: "POST /culvert/up?o=0 HTTP/1.1\r\nHost: x\r\nCulvert-Connection: \(connectionID)\r\n"
            + "Content-Length: \(bytes)\r\n\r\n")
        head.writeInteger(UInt8(ascii: "D"))
        head.writeInteger(UInt64(0))
        head.writeInteger(UInt32(bytes - 13))
        let block = ByteBuffer(repeating: 0x55, count: 256 * 1024)
        do {
            try await channel.writeAndFlush(head)
            var sent = 13
            while sent < bytes {
                try await channel.writeAndFlush(block)
                sent += block.readableBytes
            }
        } catch {
            // The server closed the connection: the upload was refused, which is the point.
        }
        return channel
    }

    /// A `culvert server` process on a free loopback port, token "right", allowing the echo target, with `extra`
    /// arguments; returns it once it listens.
    private static func startServerProcess(echoPort: Int, _ extra: [String] = []) async throws -> (ChildProcess, Int) {
        let started = try await RealProxy.startOnFreePort { port -> (ChildProcess, Int)? in
            let process = try ChildProcess.spawn(
                CommandLineTests.executable.path,
                ["server", "--listen", "127.0.0.1:\(port)", "--token", "right", "--allow", "127.0.0.1:\(echoPort)",
                 "--log-level", "error"] + extra
            )
            if try await RealProxy.waitForListener(port: port, startedBy: process) { return (process, port) }
            process.stop()
            return nil
        }
        return try #require(started)
    }

    /// One session handshake with `token`; the error's text ("" when it succeeded).
    private static func handshakeError(endpoint: ServerEndpoint, token: String, options: TransportOptions, group: any EventLoopGroup) async -> String {
        let eventLoop = group.next()
        do {
            let connection = try await ClientTransports.make(.websocket, options: options).connectBound(to: endpoint, on: eventLoop).get()
            let session = try await eventLoop.submit {
                let session = TunnelSession(role: .client, transport: connection.value, configuration: SessionConfiguration(token: token),
                                            logger: TunnelHarness.logger)
                session.start()
                return SessionHandle(session)
            }.get()
            defer { session.close() }
            _ = try await session.established.get()
            return ""
        } catch {
            return "\(error)"
        }
    }

    private static func moveData(to endpoint: ServerEndpoint, echoPort: Int, bytes: Int, group: any EventLoopGroup) async throws {
        let client = try await TunnelClient.connect(
            configuration: .init(
                server: endpoint, transportOptions: TransportOptions(logger: TunnelHarness.logger),
                session: SessionConfiguration(token: "right"),
                forwards: [ForwardSpec(bindPort: 0, target: .init(host: "127.0.0.1", port: echoPort))]
            ),
            group: group, logger: TunnelHarness.logger
        )
        let transfer = try await TransferClient.echoTransfer(
            host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: bytes, group: group
        )
        #expect(transfer.digestsMatch)
        #expect(transfer.bytesReceived == bytes)
        await client.shutdown(gracePeriod: .zero)
    }

    /// 1,000 connections that send nothing and 100 that send their request head a byte at a time: a client moves
    /// 4 MiB each way meanwhile, and the server cuts the slow and silent ones after its request-head timeout.
    @Test func idleAndSlowConnectionsDoNotStopALegitimateClient() async throws {
        let echo = try await EchoServer.start(group: self.group)
        var http = HTTPTransportServerSettings()
        http.requestHeadTimeout = .seconds(3)
        let server = try await self.startServer(echoPort: echo.port, http: http)
        let closed = NIOLockedValueBox(0)
        let closures = StateChangeSignal()
        var silent: [any Channel] = []
        for _ in 0..<1000 {
            let channel = try await ClientBootstrap(group: self.group)
                .connect(host: "127.0.0.1", port: server.localAddress!.port!).get()
            channel.closeFuture.whenComplete { _ in
                closed.withLockedValue { $0 += 1 }
                closures.notify()
            }
            silent.append(channel)
        }
        let request = Array("GET /culvert/ws HTTP/1.1\r\nHost: server\r\nUpgrade: websocket\r\n".utf8)
        let trickle = Task {
            var slow: [any Channel] = []
            for _ in 0..<100 {
                let channel = try await ClientBootstrap(group: self.group)
                    .connect(host: "127.0.0.1", port: server.localAddress!.port!).get()
                channel.closeFuture.whenComplete { _ in
                    closed.withLockedValue { $0 += 1 }
                    closures.notify()
                }
                slow.append(channel)
            }
            for byte in request {
                for channel in slow where channel.isActive {
                    channel.writeAndFlush(ByteBuffer(bytes: [byte]), promise: nil)
                }
                try await Task.sleep(for: .seconds(1))
                if slow.allSatisfy({ !$0.isActive }) { break }
            }
        }
        let client = try await self.connect(server, echoPort: echo.port)
        let transfer = try await TransferClient.echoTransfer(
            host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: 4 << 20, group: self.group
        )
        #expect(transfer.digestsMatch)
        #expect(transfer.bytesReceived == 4 << 20)
        #expect(await closures.wait(timeout: .seconds(30)) { closed.withLockedValue { $0 } >= 1100 })
        #expect(closed.withLockedValue { $0 } == 1100)
        trickle.cancel()
        // The tunnel outlived all of it.
        let again = try await TransferClient.echoTransfer(
            host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: 1 << 20, group: self.group
        )
        #expect(again.digestsMatch)
        await client.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }

    @Test func oversizedRequestHeadsAreRefused() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let server = try await self.startServer(echoPort: echo.port)
        let long = "GET /culvert/nothing HTTP/1.1\r\nHost: s\r\nX-Long: \(String(repeating: "a", count: 20_000))\r\n\r\n"
        let many = "GET /culvert/nothing HTTP/1.1\r\nHost: s\r\n" + (0..<100).map { "X-\($0): v\r\n" }.joined() + "\r\n"
        let longLine = "GET /culvert/\(String(repeating: "p", count: 20_000)) HTTP/1.1\r\nHost: s\r\n\r\n"
        for request in [long, many, longLine] {
            let answer = try await Self.exchange(request, port: server.localAddress!.port!)
            #expect(answer.hasPrefix("HTTP/1.1 400"), "\(answer.prefix(60))")
        }
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }

    /// A client that opens more streams than the server allows gets refusals for the extra ones; the server and the
    /// streams within the limit carry on.
    @Test func streamsPastTheLimitAreRefusedNotFatal() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let server = try await self.startServer(echoPort: echo.port, maximumStreams: 8)
        let client = try await self.connect(server, echoPort: echo.port)
        let port = client.listenerAddresses[0].port!
        var open: [any Channel] = []
        // Each stream echoes a byte, so all eight are open end to end before the next ones are tried.
        for _ in 0..<8 {
            open.append(try await RawConnection.echoAndStayOpen(port: port, byteCount: 1, group: self.group))
        }
        var refused = 0
        for _ in 0..<20 {
            let result = try? await TransferClient.echoTransfer(host: "127.0.0.1", port: port, byteCount: 1024, group: self.group)
            if result?.digestsMatch != true { refused += 1 }
        }
        #expect(refused == 20)
        for channel in open { try? await channel.close() }
        // The client's side of each closed stream is gone once the server's CLOSE came back.
        let session = client.session
        #expect(await client.changes.wait(timeout: .seconds(10)) { await session.onLoop { $0.streamCount == 0 } })
        let transfer = try await TransferClient.echoTransfer(host: "127.0.0.1", port: port, byteCount: 1 << 20, group: self.group)
        #expect(transfer.digestsMatch)
        await client.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }

    /// With --allow-any, a stream to the server's own listener (by address or by name) is refused, not looped.
    @Test func aStreamToTheServerItselfIsRefused() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let server = try await self.startServer(echoPort: echo.port, allowAny: true)
        let ownPort = server.localAddress!.port!
        for host in ["127.0.0.1", "localhost"] {
            let client = try await TunnelClient.connect(
                configuration: .init(
                    server: ServerEndpoint(host: "127.0.0.1", port: ownPort),
                    transportOptions: TransportOptions(logger: TunnelHarness.logger), session: SessionConfiguration(token: "right"),
                    forwards: [ForwardSpec(bindPort: 0, target: .init(host: host, port: ownPort))]
                ),
                group: self.group, logger: TunnelHarness.logger
            )
            let result = try? await TransferClient.echoTransfer(
                host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: 1024, group: self.group
            )
            #expect(result?.digestsMatch != true)
            // Refused at OPEN (not connected and then cut by the HTTP listener's answer to the bytes).
            let session = client.session
            #expect(await client.changes.wait(timeout: .seconds(10)) { await session.onLoop { $0.statistics.streamsRefused > 0 } })
            #expect(try await session.submit { $0.statistics.streamsRefused }.get() == 1, "\(host)")
            #expect(server.activeSessions == 1)
            await client.shutdown(gracePeriod: .zero)
        }
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }

    /// Sends `request` on a new connection and returns what comes back until the server closes it.
    private static func exchange(_ request: String, port: Int) async throws -> String {
        let received = NIOLockedValueBox("")
        let changes = StateChangeSignal()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Collector(received, changes: changes))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        try await channel.writeAndFlush(ByteBuffer(string: request))
        _ = await changes.wait(timeout: .seconds(2)) {
            received.withLockedValue { $0.contains("\r\n\r\n") } || !channel.isActive
        }
        try? await channel.close()
        return received.withLockedValue { $0 }
    }

    private static func residentMiB(pid: pid_t) -> Int {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/statm", encoding: .utf8)) ?? "0 0"
        let pages = Int(text.split(separator: " ")[1]) ?? 0
        return pages * Int(sysconf(Int32(_SC_PAGESIZE))) / (1 << 20)
    }
}

/// A weak reference to a session, read off its loop only to see whether it is gone (nothing of it is touched).
private struct WeakSession: @unchecked Sendable {
    weak var session: TunnelSession?
    init(_ session: TunnelSession) { self.session = session }
}

private final class Collector: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let text: NIOLockedValueBox<String>
    /// Notified after each read and at the close.
    let changes: StateChangeSignal
    init(_ text: NIOLockedValueBox<String>, changes: StateChangeSignal) {
        self.text = text
        self.changes = changes
    }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = self.unwrapInboundIn(data)
        self.text.withLockedValue { $0 += String(buffer: buffer) }
        self.changes.notify()
    }
    func channelInactive(context: ChannelHandlerContext) {
        self.changes.notify()
        context.fireChannelInactive()
    }
}
