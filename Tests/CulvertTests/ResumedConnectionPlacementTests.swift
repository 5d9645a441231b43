@testable import Culvert
import CulvertTools
import CulvertTransport
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

/// A session resumed on a new chunked or polling connection adopts it on its own loop: the client's `open` names
/// the session's placement, and the server makes the connection where the session lives, so no message of the
/// session crosses loops for the rest of its life. (A WebSocket or CONNECT connection stays on the loop of its
/// socket, and a session resumed on one on another loop is bridged.)
@Suite struct ResumedConnectionPlacementTests {
    /// Each move between chunked and polling resumes the session on a new connection (an `open` of its own).
    @Test func aSessionResumedOnANewHTTPConnectionAdoptsItOnItsOwnLoop() async throws {
        // Four loops: a connection left where the listener took it would land on the session's loop one time in four.
        let serverGroup = MultiThreadedEventLoopGroup(numberOfThreads: 4)
        let group = MultiThreadedEventLoopGroup.singleton
        let echo = try await EchoServer.start(group: group)
        let server = try await TunnelHarness.startServer(allow: ["127.0.0.1:\(echo.port)"], group: serverGroup)
        let client = try await TunnelHarness.connectClient(serverPort: server.localAddress!.port!, targets: [echo.port], transport: .polling)
        let held = try await CommandLineTests.EchoConnection(port: client.listenerAddresses[0].port!, group: group)
        #expect(try await held.echo("before") == "before")
        for move in 1...5 {
            let kind: TransportKind = move % 2 == 1 ? .chunked : .polling
            client.switchTransport(to: kind)
            #expect(await client.changes.wait(timeout: .seconds(20)) {
                let snapshot = try? await client.session.snapshot()
                return snapshot?.resumptions == move && snapshot?.transportKind == kind && client.isConnected
            }, "move \(move) to \(kind)")
            #expect(try await held.echo("after move \(move)") == "after move \(move)")
            let sessions = server.sessions.withLockedValue { Array($0.values) }
            #expect(sessions.count == 1, "\(sessions.count) sessions")
            for session in sessions {
                let carriedBy = try await session.submit { $0.transport.map { "\(type(of: $0))" } }.get()
                #expect(carriedBy == "HTTPServerTransportConnection", "after move \(move) to \(kind) the session is carried by \(carriedBy ?? "nothing")")
            }
        }
        try await held.channel.close()
        await client.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try? await echo.close()
        try await serverGroup.shutdownGracefully()
    }
}

extension ResumedConnectionPlacementTests {
    /// A placement tag that names no session the server has (a guess, an expired session) changes nothing: the
    /// `open` is answered with a connection id as usual.
    @Test func anOpenWhosePlacementNamesNoSessionIsAnsweredAsUsual() async throws {
        let server = try await TunnelHarness.startServer(allow: [])
        let port = server.localAddress!.port!
        let answer = ChildProcess.run("/usr/bin/curl", [
            "-sS", "--max-time", "10", "-X", "POST", "-H", "Culvert-Placement: 0123456789abcdef", "-w", " %{http_code}",
            "http://127.0.0.1:\(port)/culvert/open?t=polling",
        ]) ?? "curl did not start"
        #expect(answer.hasSuffix(" 200"), "\(answer)")
        #expect(answer.split(separator: "\n").first.map { $0.count == 32 && $0.allSatisfy(\.isHexDigit) } == true, "\(answer)")
        await server.shutdown(gracePeriod: .zero)
    }

    /// The tag is the protocol's: 16 hex digits of SHA-256 over the label and the id (docs/PROTOCOL.md).
    @Test func thePlacementTagIsTheFirstEightBytesOfTheLabelledHashOfTheSessionID() {
        let id = Array(0..<16 as Range<UInt8>)
        let expected = ChildProcess.run("/usr/bin/python3", [
            "-c", "import hashlib; print(hashlib.sha256(b'culvert v1 placement' + bytes(range(16))).hexdigest()[:16])",
        ])?.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(SessionPlacement.tag(sessionID: id) == expected)
        #expect(SessionPlacement.tag(sessionID: id).count == 16)
    }
}
