import Culvert
import CulvertCore
import CulvertTools
import CulvertTransport
import Foundation
import NIOCore
import NIOPosix
import Testing

/// Three culvert servers behind one address, with the balancers' standard stickiness and no culvert-specific
/// plugin: haproxy's inserted cookie and nginx's hash of the session's affinity cookie. Chunked and polling make many
/// requests per session; every one must reach the server that holds the session.
@Suite(.serialized) struct LoadBalancerTests {
    let group = MultiThreadedEventLoopGroup.singleton

    struct Balanced {
        let servers: [TunnelServer]
        let balancer: RealProxy
        let echo: EchoServer

        func stop() async {
            for server in self.servers { await server.shutdown(gracePeriod: .zero) }
            self.balancer.stop()
            try? await self.echo.close()
        }
    }

    func start(_ kind: RealProxy.Kind, configuration: String) async throws -> Balanced {
        let echo = try await EchoServer.start(group: self.group)
        var servers: [TunnelServer] = []
        for _ in 0..<3 { servers.append(try await TunnelHarness.startServer(allow: ["127.0.0.1:\(echo.port)"])) }
        let balancer = try await RealProxy.start(
            kind, configuration: fixturesDirectory() + "/balancers/" + configuration,
            upstreamPort: servers[0].localAddress!.port!, moreUpstreamPorts: servers.dropFirst().map { $0.localAddress!.port! }
        )
        return Balanced(servers: servers, balancer: balancer, echo: echo)
    }

    static let cases: [(RealProxy.Kind, String, TransportKind)] = [
        (.haproxy, "haproxy-sticky.cfg", .polling), (.haproxy, "haproxy-sticky.cfg", .chunked), (.haproxy, "haproxy-sticky.cfg", .websocket),
        (.nginx, "nginx-hash.conf", .polling), (.nginx, "nginx-hash.conf", .chunked), (.nginx, "nginx-hash.conf", .websocket),
    ]

    /// Two clients through the balancer each keep every request of their session on one server, and move data;
    /// a dropped connection resumes on the same server (the cookies go with the session).
    @Test(arguments: Self.cases)
    func everyRequestOfASessionReachesTheServerThatHoldsIt(kind: RealProxy.Kind, configuration: String, transport: TransportKind) async throws {
        let balanced = try await self.start(kind, configuration: configuration)
        var clients: [TunnelClient] = []
        do {
            for _ in 0..<4 {
                clients.append(try await TunnelHarness.connectClient(serverPort: balanced.balancer.port, targets: [balanced.echo.port], transport: transport))
            }
            for client in clients {
                let transfer = try await TransferClient.echoTransfer(
                    host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: 256 * 1024, group: self.group
                )
                #expect(transfer.digestsMatch, "\(kind) \(transport)")
            }
            // Each session lives on exactly one server: four sessions in all, none split or lost.
            #expect(balanced.servers.map(\.activeSessions).reduce(0, +) == 4, "\(balanced.servers.map(\.activeSessions))")
            if kind == .haproxy {
                // haproxy's round robin spreads new sessions; its cookie then keeps each on its server.
                #expect(balanced.servers.allSatisfy { $0.activeSessions >= 1 }, "\(balanced.servers.map(\.activeSessions))")
            }
            for client in clients { #expect(client.sessionsStarted == 1, "a session was lost: \(kind) \(transport)") }
        } catch {
            Issue.record("\(kind) \(transport): \(error)\n\(balanced.balancer.log)")
        }
        for client in clients { await client.shutdown(gracePeriod: .zero) }
        await balanced.stop()
    }

    /// The server holding a session drains (GOAWAY) and leaves the balancer: the client's next session goes to the
    /// other server through the same address, and data moves again; no request hangs on the server that left.
    @Test(arguments: [TransportKind.polling, .chunked, .websocket])
    func whenTheSessionsServerLeavesTheClientStartsANewSessionOnAnother(transport: TransportKind) async throws {
        let balanced = try await self.start(.haproxy, configuration: "haproxy-sticky.cfg")
        let client = try await TunnelHarness.connectClient(serverPort: balanced.balancer.port, targets: [balanced.echo.port], transport: transport)
        let port = client.listenerAddresses[0].port!
        #expect(try await TransferClient.echoTransfer(host: "127.0.0.1", port: port, byteCount: 64 * 1024, group: self.group).digestsMatch)
        let holder = try #require(balanced.servers.firstIndex { $0.activeSessions == 1 })
        let others = balanced.servers.indices.filter { $0 != holder }.map { balanced.servers[$0] }
        await balanced.servers[holder].shutdown(gracePeriod: .zero)
        #expect(await client.changes.wait(timeout: .seconds(30)) { client.sessionsStarted == 2 && client.isConnected })
        #expect(try await TransferClient.echoTransfer(host: "127.0.0.1", port: port, byteCount: 64 * 1024, group: self.group).digestsMatch)
        #expect(others.map(\.activeSessions).reduce(0, +) == 1)
        await client.shutdown(gracePeriod: .zero)
        await balanced.stop()
    }

    /// A WebSocket or CONNECT session (one long connection) whose connection drops resumes through the balancer on
    /// the server that holds it: its upgrade requests carry the cookies of the session (haproxy's SRV, the affinity
    /// cookie nginx hashes), so its open stream goes on and no new session starts.
    @Test(arguments: [
        (RealProxy.Kind.haproxy, "haproxy-sticky.cfg", TransportKind.websocket), (.haproxy, "haproxy-sticky.cfg", .connect),
        (.nginx, "nginx-hash.conf", .websocket), (.nginx, "nginx-hash.conf", .connect),
    ])
    func aDroppedConnectionResumesThroughTheBalancerOnTheServerThatHoldsTheSession(
        kind: RealProxy.Kind, configuration: String, transport: TransportKind
    ) async throws {
        let balanced = try await self.start(kind, configuration: configuration)
        let relay = try await CuttingRelay.start(targetPort: balanced.balancer.port, group: self.group)
        var clients: [TunnelClient] = []
        var held: [CommandLineTests.EchoConnection] = []
        do {
            // Three sessions: with round robin and no cookie, each resumption would reach another server 2 times in 3.
            for _ in 0..<3 {
                let client = try await TunnelHarness.connectClient(serverPort: relay.port, targets: [balanced.echo.port], transport: transport)
                clients.append(client)
                held.append(try await CommandLineTests.EchoConnection(port: client.listenerAddresses[0].port!, group: self.group))
            }
            for connection in held { #expect(try await connection.echo("before") == "before") }
            relay.cutAll()
            for client in clients { #expect(await client.changes.wait(timeout: .seconds(30)) { ((try? await client.session.snapshot().resumptions) ?? 0) >= 1 && client.isConnected }) }
            for connection in held { #expect(try await connection.echo("after the drop") == "after the drop", "\(kind) \(transport)") }
            for client in clients { #expect(client.sessionsStarted == 1, "a session was lost: \(kind) \(transport)") }
        } catch {
            Issue.record("\(kind) \(transport): \(error)\n\(balanced.balancer.log)")
        }
        for connection in held { try? await connection.channel.close() }
        for client in clients { await client.shutdown(gracePeriod: .zero) }
        try? await relay.close()
        await balanced.stop()
    }

    /// The server holding a chunked or polling session drains with time to spare: it keeps serving that session's
    /// requests (the balancer's cookie still brings them) so its open stream goes on to its end, while the client's
    /// new connections go to a new session on the other server; once the stream ends the drained server is done.
    /// nginx opens a connection to the server for every request (its upstream has no `keepalive`), so the drained
    /// server has to keep accepting them; haproxy reuses its connections.
    @Test(arguments: Self.cases)
    func aDrainingServerFinishesItsSessionsOpenStreamWhileNewStreamsGoToAnother(
        kind: RealProxy.Kind, configuration: String, transport: TransportKind
    ) async throws {
        let balanced = try await self.start(kind, configuration: configuration)
        let client = try await TunnelHarness.connectClient(serverPort: balanced.balancer.port, targets: [balanced.echo.port], transport: transport)
        let port = client.listenerAddresses[0].port!
        let held = try await CommandLineTests.EchoConnection(port: port, group: self.group)
        #expect(try await held.echo("before the drain") == "before the drain")
        let holder = try #require(balanced.servers.firstIndex { $0.activeSessions == 1 })
        let draining = balanced.servers[holder]
        let others = balanced.servers.indices.filter { $0 != holder }.map { balanced.servers[$0] }

        let drained = Task { await draining.shutdown(gracePeriod: .seconds(60)) }
        #expect(await client.changes.wait(timeout: .seconds(30)) { client.sessionsStarted == 2 && client.isConnected })
        #expect(try await TransferClient.echoTransfer(host: "127.0.0.1", port: port, byteCount: 256 * 1024, group: self.group).digestsMatch)
        #expect(others.map(\.activeSessions).reduce(0, +) == 1, "new streams go to another server")
        #expect(try await held.echo("after the drain began") == "after the drain began", "\(kind) \(transport)")
        #expect(draining.activeSessions == 1, "the drained server keeps the session of the open stream")

        try await held.channel.close()
        #expect(await draining.changes.wait(timeout: .seconds(30)) { draining.activeSessions == 0 })
        await drained.value
        #expect(try await TransferClient.echoTransfer(host: "127.0.0.1", port: port, byteCount: 64 * 1024, group: self.group).digestsMatch)
        await client.shutdown(gracePeriod: .zero)
        await balanced.stop()
    }

    /// Clients on all four transports through the balancer, moving data at once; the server holding the most
    /// sessions drains mid-run. Every transfer arrives intact (those on the drained server finish there), the drained
    /// server ends once they have, and the next round of transfers goes through the two servers left.
    /// `CULVERT_BALANCER_CLIENTS` and `CULVERT_BALANCER_MIB` scale it up (the issue's 30 clients × 8 MiB) outside CI.
    @Test(arguments: [(RealProxy.Kind.haproxy, "haproxy-sticky.cfg"), (.nginx, "nginx-hash.conf")])
    func clientsOnEveryTransportMoveTheirDataIntactWhileOneServerDrainsMidRun(kind: RealProxy.Kind, configuration: String) async throws {
        let environment = ProcessInfo.processInfo.environment
        let clientCount = environment["CULVERT_BALANCER_CLIENTS"].flatMap { Int($0) } ?? 8
        let byteCount = (environment["CULVERT_BALANCER_MIB"].flatMap { Int($0) }.map { $0 << 20 }) ?? 512 << 10
        let balanced = try await self.start(kind, configuration: configuration)
        let transports: [TransportKind] = [.polling, .chunked, .websocket, .connect]
        var clients: [TunnelClient] = []
        for index in 0..<clientCount {
            clients.append(try await TunnelHarness.connectClient(
                serverPort: balanced.balancer.port, targets: [balanced.echo.port], transport: transports[index % transports.count]
            ))
        }
        let ports = clients.map { $0.listenerAddresses[0].port! }
        let group = self.group
        let busiest = try #require(balanced.servers.indices.max { balanced.servers[$0].activeSessions < balanced.servers[$1].activeSessions })
        let draining = balanced.servers[busiest]
        let drainedSessions = draining.activeSessions
        let started = ContinuousClock.now
        let intact = try await withThrowingTaskGroup(of: (Int, String?).self) { tasks in
            for (index, port) in ports.enumerated() {
                tasks.addTask {
                    let transfer = try await TransferClient.echoTransfer(host: "127.0.0.1", port: port, byteCount: byteCount, seed: UInt64(index), group: group)
                    let ok = transfer.digestsMatch && transfer.bytesReceived == byteCount
                    return (index, ok ? nil : "sent \(transfer.bytesSent) B, received \(transfer.bytesReceived) B, digests \(transfer.digestsMatch ? "match" : "differ")")
                }
            }
            // Mid-run: once the first transfer is done, the others are still moving.
            var results = [try await tasks.next()!]
            let drained = Task { await draining.shutdown(gracePeriod: .seconds(120)) }
            for try await result in tasks { results.append(result) }
            await drained.value
            return results
        }
        let elapsed = ContinuousClock.now - started
        for (index, failure) in intact {
            #expect(failure == nil, "\(kind) client \(index) on \(transports[index % transports.count]): \(failure ?? "")")
        }
        #expect(draining.activeSessions == 0, "after shutdown returned: \(Self.describe(draining))")
        #expect(drainedSessions >= 1)
        print("\(kind): \(clientCount) clients × \(byteCount >> 10) KiB echoed through 3 servers, one drained mid-run, in \(elapsed)")

        // The next round goes through the two servers left, on sessions of their own.
        for (index, port) in ports.enumerated() {
            let transfer = try await TransferClient.echoTransfer(host: "127.0.0.1", port: port, byteCount: 64 << 10, seed: UInt64(index), group: group)
            #expect(
                transfer.digestsMatch,
                "\(kind) client \(index) on \(transports[index % transports.count]) after the drain: \(Self.describe(clients[index])); servers: \(balanced.servers.map(Self.describe))"
            )
        }
        #expect(draining.activeSessions == 0, "\(Self.describe(draining))")
        #expect(clients.allSatisfy { $0.isConnected }, "\(clients.map(Self.describe))")
        for client in clients { await client.shutdown(gracePeriod: .zero) }
        await balanced.stop()
    }

    /// What a failed expectation needs to know of a client: its sessions and whether it is connected.
    static func describe(_ client: TunnelClient) -> String {
        "\(client.sessionsStarted) sessions started, \(client.isConnected ? "connected" : "not connected")"
    }

    /// What a failed expectation needs to know of a server: its sessions and its chunked and polling connections.
    static func describe(_ server: TunnelServer) -> String {
        "\(server.activeSessions) sessions (\(server.sessionsWaitingForClient) waiting for their client), \(server.httpConnectionCount) HTTP connections"
    }
}
