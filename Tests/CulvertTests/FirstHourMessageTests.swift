@testable import Culvert
import CulvertCore
import CulvertTransport
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

/// The parts behind the first-hour messages, without processes: the probe's one-proof-at-a-time gate, the probe
/// table, rounded durations, and what a stream to the server's own port is told.
@Suite struct FirstHourMessageTests {
    /// The first prober goes ahead; the others wait. A refusal reaches every waiter without it sending a proof.
    @Test func aRefusedProofStopsEveryWaitingProbe() async throws {
        let gate = AuthenticationGate()
        guard case .proceed = await gate.enter() else {
            Issue.record("the first prober must go ahead")
            return
        }
        let waiters = (0..<3).map { _ in Task { await gate.enter() } }
        try await Self.waitUntil { gate.waitingCount == 3 }
        gate.refused("wrong token")
        for waiter in waiters {
            guard case .refused(let reason) = await waiter.value else {
                Issue.record("a waiter went ahead after the refusal")
                continue
            }
            #expect(reason == "wrong token")
        }
        guard case .refused = await gate.enter() else {
            Issue.record("a late prober went ahead after the refusal")
            return
        }
    }

    /// Accepted: every waiter goes ahead at once. Inconclusive (the first prober's transport failed): only the next
    /// waiter goes ahead.
    @Test func anAcceptedProofLetsAllGoAndAnInconclusiveOneLetsTheNext() async throws {
        let gate = AuthenticationGate()
        _ = await gate.enter()
        let first = Task { await gate.enter() }
        try await Self.waitUntil { gate.waitingCount == 1 }
        let second = Task { await gate.enter() }
        try await Self.waitUntil { gate.waitingCount == 2 }
        gate.inconclusive()
        guard case .proceed = await first.value else {
            Issue.record("the next waiter did not go ahead after an inconclusive try")
            return
        }
        #expect(gate.waitingCount == 1)
        gate.accepted()
        guard case .proceed = await second.value else {
            Issue.record("a waiter did not go ahead after the acceptance")
            return
        }
    }

    /// A cancelled waiter goes ahead (its probe is ending) and leaves no one behind.
    @Test func aCancelledWaiterIsReleased() async throws {
        let gate = AuthenticationGate()
        _ = await gate.enter()
        let waiter = Task { await gate.enter() }
        try await Self.waitUntil { gate.waitingCount == 1 }
        waiter.cancel()
        guard case .proceed = await waiter.value else {
            Issue.record("a cancelled waiter was not released")
            return
        }
        #expect(gate.waitingCount == 0)
    }

    /// A failure text longer than the column widens it: nothing is cut, and every row lines up under its header.
    @Test func theProbeTableNeverCutsAFailureIntoTheNextColumn() {
        let results = [
            ProbeResult(transport: .websocket, works: true, failure: nil, detail: "", roundTripMilliseconds: 0.4, elapsedMilliseconds: 12, upstream: .stream),
            ProbeResult(transport: .connect, works: false, failure: .serverUnreachableFromProxy, detail: "the proxy said 502",
                        roundTripMilliseconds: nil, elapsedMilliseconds: 30),
        ]
        let lines = ProbeTable.text(results).split(separator: "\n").map(String.init)
        #expect(lines.count == 4)
        let failure = "proxy_cannot_reach_server: proxy cannot reach the server"
        #expect(lines[2].contains(failure + "  "))
        let rttColumn = lines[0].range(of: "rtt ms")!.lowerBound.utf16Offset(in: lines[0])
        for line in [lines[1], lines[2]] {
            let index = line.index(line.startIndex, offsetBy: rttColumn)
            #expect(line[line.index(before: index)] == " ", "\(line)")
            #expect(line[index] != " ", "\(line)")
        }
        #expect(lines[3].trimmingCharacters(in: .whitespaces) == "the proxy said 502")
    }

    /// Durations in log lines are rounded the way people say them.
    @Test func durationsAreRoundedForPeople() {
        #expect(TimeAmount.milliseconds(123).roundedText == "0.1 s")
        #expect(TimeAmount.milliseconds(460).roundedText == "0.5 s")
        #expect(TimeAmount.milliseconds(2_700).roundedText == "3 s")
        #expect(TimeAmount.seconds(60).roundedText == "1 min")
        #expect(TimeAmount.seconds(150).roundedText == "2 min 30 s")
        #expect(TimeAmount.seconds(3_900).roundedText == "1 h 5 min")
        #expect(TimeAmount.zero.roundedText == "0 s")
    }

    /// A stream to the server's own port is refused without suggesting `--allow` (allowing it would not help);
    /// another refused target still gets the suggestion.
    @Test func aStreamToTheServersOwnPortIsNeverToldToUseAllow() async throws {
        let connector = TargetConnector(allowlist: Allowlist(), connectTimeout: .seconds(1))
        connector.listenPort.withLockedValue { $0 = 8080 }
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let logger = Logger(label: "test")
        for target in [TargetAddress(host: "127.0.0.1", port: 8080), TargetAddress(host: "localhost", port: 8080),
                       TargetAddress(host: "tunnel.example.com", port: 8080)]
        {
            let error = await #expect(throws: StreamOpenFailure.self) {
                _ = try await connector.connect(to: target, on: loop, logger: logger).get()
            }
            #expect(error?.reason == .notAllowed)
            #expect(error?.message.contains("--allow") == false, "\(target): \(error?.message ?? "")")
        }
        let other = await #expect(throws: StreamOpenFailure.self) {
            _ = try await connector.connect(to: TargetAddress(host: "db.internal", port: 5432), on: loop, logger: logger).get()
        }
        #expect(other?.message.contains("add --allow db.internal:5432") == true)
    }

    /// A client with no token that the server refuses learns that it gave none, not that its token is wrong.
    @Test func aClientWithoutATokenIsToldItGaveNone() {
        var client = HandshakeStateMachine(role: .client(token: nil), capabilities: [], maximumDataPayload: 1024)
        _ = client.start()
        guard case .fail(let error, _) = client.receive(.goAway(code: .authenticationFailed, message: "wrong token")) else {
            Issue.record("the refusal did not fail the handshake")
            return
        }
        #expect(error == .noTokenGiven)
        #expect(SessionError.handshake(error).isAuthenticationFailure)
        #expect(SessionError.handshake(error).userMessage.contains("no token given"))
        #expect(!SessionError.handshake(error).userMessage.contains("check --token"))
    }

    private static func waitUntil(_ condition: () -> Bool) async throws {
        for _ in 0..<1000 where !condition() { await Task.yield(); try await Task.sleep(for: .milliseconds(1)) }
        #expect(condition())
    }
}
