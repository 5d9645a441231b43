import Culvert
import CulvertCore
import CulvertTools
import CulvertTransport
import NIOCore
import NIOPosix
import Testing

/// Several culvert servers behind one address, with the balancers' standard stickiness and no culvert-specific
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
        for _ in 0..<2 { servers.append(try await TunnelHarness.startServer(allow: ["127.0.0.1:\(echo.port)"])) }
        let balancer = try await RealProxy.start(
            kind, configuration: fixturesDirectory() + "/balancers/" + configuration,
            upstreamPort: servers[0].localAddress!.port!, secondUpstreamPort: servers[1].localAddress!.port!
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
    func whenTheSessionsServerLeavesTheClientStartsANewSessionOnTheOther(transport: TransportKind) async throws {
        let balanced = try await self.start(.haproxy, configuration: "haproxy-sticky.cfg")
        let client = try await TunnelHarness.connectClient(serverPort: balanced.balancer.port, targets: [balanced.echo.port], transport: transport)
        let port = client.listenerAddresses[0].port!
        #expect(try await TransferClient.echoTransfer(host: "127.0.0.1", port: port, byteCount: 64 * 1024, group: self.group).digestsMatch)
        let holder = try #require(balanced.servers.firstIndex { $0.activeSessions == 1 })
        let other = balanced.servers[1 - holder]
        await balanced.servers[holder].shutdown(gracePeriod: .zero)
        #expect(await client.changes.wait(timeout: .seconds(30)) { client.sessionsStarted == 2 && client.isConnected })
        #expect(try await TransferClient.echoTransfer(host: "127.0.0.1", port: port, byteCount: 64 * 1024, group: self.group).digestsMatch)
        #expect(other.activeSessions == 1)
        await client.shutdown(gracePeriod: .zero)
        await balanced.stop()
    }

    /// The server holding a chunked or polling session drains with time to spare: it keeps serving that session's
    /// requests (the balancer's cookie still brings them) so its open stream goes on to its end, while the client's
    /// new connections go to a new session on the other server; once the stream ends the drained server is done.
    /// nginx opens a connection to the server for every request (its upstream has no `keepalive`), so the drained
    /// server has to keep accepting them; haproxy reuses its connections.
    @Test(arguments: Self.cases)
    func aDrainingServerFinishesItsSessionsOpenStreamWhileNewStreamsGoToTheOther(
        kind: RealProxy.Kind, configuration: String, transport: TransportKind
    ) async throws {
        let balanced = try await self.start(kind, configuration: configuration)
        let client = try await TunnelHarness.connectClient(serverPort: balanced.balancer.port, targets: [balanced.echo.port], transport: transport)
        let port = client.listenerAddresses[0].port!
        let held = try await CommandLineTests.EchoConnection(port: port, group: self.group)
        #expect(try await held.echo("before the drain") == "before the drain")
        let holder = try #require(balanced.servers.firstIndex { $0.activeSessions == 1 })
        let draining = balanced.servers[holder], other = balanced.servers[1 - holder]

        let drained = Task { await draining.shutdown(gracePeriod: .seconds(60)) }
        #expect(await client.changes.wait(timeout: .seconds(30)) { client.sessionsStarted == 2 && client.isConnected })
        #expect(try await TransferClient.echoTransfer(host: "127.0.0.1", port: port, byteCount: 256 * 1024, group: self.group).digestsMatch)
        #expect(other.activeSessions == 1, "new streams go to the other server")
        #expect(try await held.echo("after the drain began") == "after the drain began", "\(kind) \(transport)")
        #expect(draining.activeSessions == 1, "the drained server keeps the session of the open stream")

        try await held.channel.close()
        #expect(await draining.changes.wait(timeout: .seconds(30)) { draining.activeSessions == 0 })
        await drained.value
        #expect(try await TransferClient.echoTransfer(host: "127.0.0.1", port: port, byteCount: 64 * 1024, group: self.group).digestsMatch)
        await client.shutdown(gracePeriod: .zero)
        await balanced.stop()
    }
}
