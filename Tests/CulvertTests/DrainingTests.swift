import Culvert
import CulvertTools
import CulvertTransport
import NIOCore
import NIOPosix
import Testing

/// A server draining with a polling session open keeps its port for that session's requests and answers what would
/// start a new session with a 503 that says it is draining, to curl and to culvert's own clients alike.
@Suite struct DrainingTests {
    let group = MultiThreadedEventLoopGroup.singleton

    static func curl(_ arguments: [String]) -> String {
        ChildProcess.run("/usr/bin/curl", ["-sS", "--max-time", "10", "--no-progress-meter", "-w", "%{http_code}"] + arguments) ?? "curl did not start"
    }

    @Test func aDrainingServerRefusesNewSessionsWith503AndServesTheSessionItKeeps() async throws {
        let echo = try await EchoServer.start(group: self.group)
        let server = try await TunnelHarness.startServer(allow: ["127.0.0.1:\(echo.port)"])
        let port = server.localAddress!.port!
        let client = try await TunnelHarness.connectClient(serverPort: port, targets: [echo.port], transport: .polling)
        let held = try await CommandLineTests.EchoConnection(port: client.listenerAddresses[0].port!, group: self.group)
        #expect(try await held.echo("before the drain") == "before the drain")

        let drained = Task { await server.shutdown(gracePeriod: .seconds(60)) }
        #expect(await server.changes.wait(timeout: .seconds(10)) { server.isDrainingWithListenerOpen })

        let page = Self.curl(["-i", "http://127.0.0.1:\(port)/culvert"])
        #expect(page.contains("503"), "\(page)")
        #expect(page.contains("Culvert-Draining: 1"), "\(page)")
        #expect(page.contains("Retry-After: 1"), "\(page)")
        #expect(page.contains("this server is draining (shutting down) and takes no new sessions"), "\(page)")
        #expect(Self.curl(["-X", "POST", "http://127.0.0.1:\(port)/culvert/open?t=polling"]).hasSuffix("503"))
        // A request for a connection the server does not have is not refused as draining: it goes on to the handler.
        #expect(Self.curl(["http://127.0.0.1:\(port)/culvert/down?m=poll&a=0", "-H", "Culvert-Connection: nothing"]).hasSuffix("404"))

        for transport in [TransportKind.websocket, .chunked] {
            do {
                let refused = try await TunnelHarness.connectClient(serverPort: port, targets: [echo.port], transport: transport)
                await refused.shutdown(gracePeriod: .zero)
                Issue.record("a \(transport) session was established on a draining server")
            } catch {
                #expect("\(error)".contains("the server is draining (shutting down) and takes no new sessions"), "\(error)")
            }
        }

        #expect(try await held.echo("after the drain began") == "after the drain began")
        try await held.channel.close()
        await drained.value
        #expect(Self.curl(["http://127.0.0.1:\(port)/culvert"]).contains("Failed to connect"), "the port closes once the session is done")
        await client.shutdown(gracePeriod: .zero)
        try await echo.close()
    }

    /// A chunked or polling session whose connection is cut while its server drains rides it out (its requests
    /// are retried on new connections, which the draining server serves) and finishes its open stream.
    @Test(arguments: [TransportKind.polling, .chunked])
    func aCutDuringTheDrainLeavesAnHTTPSessionsStreamIntact(transport: TransportKind) async throws {
        let tunnel = try await RelayedTunnel.start(transport: transport, group: self.group)
        let (server, relay, held) = (tunnel.server, tunnel.relay, tunnel.held)
        #expect(try await held.echo("before the drain") == "before the drain")
        let drained = Task { await server.shutdown(gracePeriod: .seconds(60)) }
        #expect(await server.changes.wait(timeout: .seconds(10)) { server.isDrainingWithListenerOpen })
        relay.cutAll()
        #expect(try await held.echo("after the cut") == "after the cut")
        try await held.channel.close()
        #expect(await server.changes.wait(timeout: .seconds(20)) { server.activeSessions == 0 }, "the drain ends with the stream")
        await drained.value
        await tunnel.close()
    }

    /// A WebSocket or CONNECT session told to go away whose connection then drops comes back to its draining
    /// server (the port is open for another client's polling session), resumes there — its requests are marked as
    /// a resumption, which passes the 503 — and finishes its open stream on the same session.
    @Test(arguments: [TransportKind.websocket, .connect])
    func aSessionGoingAwayWhoseConnectionDropsResumesOnItsDrainingServer(transport: TransportKind) async throws {
        let tunnel = try await RelayedTunnel.start(transport: transport, group: self.group)
        let (echo, server, relay, client, held) = (tunnel.echo, tunnel.server, tunnel.relay, tunnel.client, tunnel.held)
        let polling = try await TunnelHarness.connectClient(serverPort: server.localAddress!.port!, targets: [echo.port], transport: .polling)
        let keepsThePortOpen = try await CommandLineTests.EchoConnection(port: polling.listenerAddresses[0].port!, group: self.group)
        #expect(try await held.echo("before the drain") == "before the drain")
        #expect(try await keepsThePortOpen.echo("polling") == "polling")

        let drained = Task { await server.shutdown(gracePeriod: .seconds(60)) }
        #expect(await server.changes.wait(timeout: .seconds(10)) { server.isDrainingWithListenerOpen })
        #expect(await client.changes.wait(timeout: .seconds(10)) { !client.isConnected }, "the client got the GOAWAY")
        relay.cutAll()
        #expect(await server.changes.wait(timeout: .seconds(10)) { server.sessionsWaitingForClient == 0 && server.activeSessions == 2 })
        #expect(try await held.echo("after the drop") == "after the drop")
        #expect(server.activeSessions == 2, "both streams are on the sessions they were opened on")

        try await held.channel.close()
        try await keepsThePortOpen.channel.close()
        #expect(await server.changes.wait(timeout: .seconds(20)) { server.activeSessions == 0 }, "the drain ends with the streams")
        await drained.value
        await polling.shutdown(gracePeriod: .zero)
        await tunnel.close()
    }

    /// A session that waits for its client when the drain begins keeps the port open; its client resumes, is told
    /// then that the server goes away (the GOAWAY it could not be sent), and finishes its open stream.
    @Test func aSessionWaitingForItsClientWhenTheDrainBeginsIsResumedAndToldToGoAway() async throws {
        let tunnel = try await RelayedTunnel.start(transport: .websocket, group: self.group)
        let (server, relay, client, held) = (tunnel.server, tunnel.relay, tunnel.client, tunnel.held)
        #expect(try await held.echo("before the drop") == "before the drop")

        relay.setRefusing(true)
        relay.cutAll()
        #expect(await server.changes.wait(timeout: .seconds(10)) { server.sessionsWaitingForClient == 1 })
        let drained = Task { await server.shutdown(gracePeriod: .seconds(60)) }
        #expect(await server.changes.wait(timeout: .seconds(10)) { server.isDrainingWithListenerOpen })
        relay.setRefusing(false)
        #expect(await server.changes.wait(timeout: .seconds(10)) { server.sessionsWaitingForClient == 0 })
        #expect(try await held.echo("after the resumption") == "after the resumption")
        // Told to go away on resumption, the client starts its next session elsewhere (here: nowhere, so it waits).
        #expect(await client.changes.wait(timeout: .seconds(10)) { !client.isConnected })
        try await held.channel.close()
        #expect(await server.changes.wait(timeout: .seconds(20)) { server.activeSessions == 0 }, "the drain ends with the stream")
        await drained.value
        await tunnel.close()
    }

    /// A server with an echo target, and a client that reaches it through a relay that can cut its connections,
    /// with one echo connection held open through the tunnel.
    struct RelayedTunnel {
        let echo: EchoServer
        let server: TunnelServer
        let relay: CuttingRelay
        let client: TunnelClient
        let held: CommandLineTests.EchoConnection

        static func start(transport: TransportKind, group: any EventLoopGroup) async throws -> RelayedTunnel {
            let echo = try await EchoServer.start(group: group)
            let server = try await TunnelHarness.startServer(allow: ["127.0.0.1:\(echo.port)"])
            let relay = try await CuttingRelay.start(targetPort: server.localAddress!.port!, group: group)
            let client = try await TunnelHarness.connectClient(serverPort: relay.port, targets: [echo.port], transport: transport)
            let held = try await CommandLineTests.EchoConnection(port: client.listenerAddresses[0].port!, group: group)
            return RelayedTunnel(echo: echo, server: server, relay: relay, client: client, held: held)
        }

        func close() async {
            await self.client.shutdown(gracePeriod: .zero)
            try? await self.relay.close()
            try? await self.echo.close()
        }
    }
}
