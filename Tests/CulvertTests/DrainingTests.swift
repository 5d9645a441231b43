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
}
