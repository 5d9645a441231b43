import NIOCore
import NIOHTTP1
import Testing

@testable import CulvertTransport

/// Every transition of the client's upstream machine, with no sockets and no clock.
struct HTTPUpstreamStateMachineTests {
    private struct Cut: Error {}

    private static let settings = HTTPTransportClientSettings(
        streamRequestLimitBytes: 1000, streamRequestMaxAge: .seconds(50), upstreamAckTimeout: .seconds(3),
        requestTimeout: .seconds(30), maximumRetries: 2, sendWindowBytes: 100
    )

    private func machine(streaming: Bool = true) -> HTTPUpstreamStateMachine {
        HTTPUpstreamStateMachine(streaming: streaming, settings: Self.settings)
    }

    /// The request a `.connect` names, or nil for any other action.
    private func request(of action: HTTPUpstreamStateMachine.Action) -> UInt64? {
        if case .connect(let request) = action { return request }
        return nil
    }

    /// Appends `text` and opens the POST it asks for; returns its number.
    private func opened(_ machine: inout HTTPUpstreamStateMachine, with text: String) throws -> UInt64 {
        let request = try #require(self.request(of: machine.append(ByteBuffer(string: text), acknowledgementDue: false)))
        _ = machine.connectionReady(request)
        return request
    }

    /// Writes every unsent piece into the open streaming body, each as long on the wire as it is.
    private func writeAll(_ machine: inout HTTPUpstreamStateMachine) {
        for piece in machine.unsentPieces(limit: .max) {
            let length = piece.bytes.readableBytes
            machine.wroteToStream(wireBytes: length, payloadBytes: length, endingAt: piece.offset + UInt64(length))
        }
    }

    /// Nothing to send asks for no POST; the first bytes ask for one, and more bytes while it connects ask for no second.
    @Test func bytesAskForOnePostAtATime() throws {
        var machine = self.machine()
        guard case .none = machine.pump(acknowledgementDue: false) else {
            Issue.record("a POST was asked for with nothing to send")
            return
        }
        let request = try #require(self.request(of: machine.append(ByteBuffer(string: "a"), acknowledgementDue: false)))
        #expect(machine.state == .connecting(request: request))
        guard case .none = machine.append(ByteBuffer(string: "b"), acknowledgementDue: false) else {
            Issue.record("a second POST was asked for while the first connected")
            return
        }
    }

    /// An ACK the download owes asks for a POST even with no bytes to send.
    @Test func anAcknowledgementDueAsksForAPost() {
        var machine = self.machine()
        guard case .connect = machine.pump(acknowledgementDue: true) else {
            Issue.record("an ACK due did not ask for a POST")
            return
        }
    }

    /// A streaming POST opens from the last acknowledgement, with its maximum age; then more bytes go into its open
    /// body rather than into a new POST.
    @Test func aStreamingPostOpensFromTheAcknowledgementAndTakesLaterBytes() throws {
        var machine = self.machine()
        let request = try #require(self.request(of: machine.append(ByteBuffer(string: "abcd"), acknowledgementDue: false)))
        _ = machine.acknowledge(2)
        guard case .openStream(request, offset: 2, maxAge: .seconds(50)) = machine.connectionReady(request) else {
            Issue.record("the streaming POST did not open from the acknowledged offset 2")
            return
        }
        #expect(machine.state == .streaming(request: request))
        #expect(machine.unsentPieces(limit: .max).map { String(buffer: $0.bytes) } == ["cd"])
        self.writeAll(&machine)
        #expect(!machine.hasUnsentBytes)
        guard case .writeStream = machine.append(ByteBuffer(string: "e"), acknowledgementDue: false) else {
            Issue.record("a byte sent while the body was open did not go into it")
            return
        }
    }

    /// The open body ends when a piece did not fit, when bytes are left for the next POST, or at its payload or wire
    /// limit; otherwise it stays open.
    @Test func theStreamingBodyEndsAtItsLimitsOnly() throws {
        var open = self.machine()
        let request = try self.opened(&open, with: "abc")
        self.writeAll(&open)
        guard case .none = open.streamWriteFinished(full: false, wireLimit: .max) else {
            Issue.record("a body within its limits was ended")
            return
        }
        var full = open
        guard case .endStream(request, timeout: .seconds(30)) = full.streamWriteFinished(full: true, wireLimit: .max) else {
            Issue.record("a body a piece did not fit in stayed open")
            return
        }
        #expect(full.state == .awaitingResponse(request: request, endedStream: true))
        var atWireLimit = open
        guard case .endStream = atWireLimit.streamWriteFinished(full: false, wireLimit: 3) else {
            Issue.record("a body at its wire limit stayed open")
            return
        }
        var leftOver = open
        _ = leftOver.append(ByteBuffer(string: "d"), acknowledgementDue: false)
        guard case .endStream = leftOver.streamWriteFinished(full: false, wireLimit: .max) else {
            Issue.record("a body with bytes left for the next POST stayed open")
            return
        }
        var atPayloadLimit = open
        _ = atPayloadLimit.append(ByteBuffer(repeating: 0, count: 997), acknowledgementDue: false)
        self.writeAll(&atPayloadLimit)
        guard case .endStream = atPayloadLimit.streamWriteFinished(full: false, wireLimit: .max) else {
            Issue.record("a body at its payload limit (1000 bytes) stayed open")
            return
        }
    }

    /// The maximum age ends only the streaming POST it was set for.
    @Test func theMaximumAgeEndsOnlyItsOwnPost() throws {
        var machine = self.machine()
        let request = try self.opened(&machine, with: "a")
        guard case .none = machine.streamAged(request + 1), case .endStream = machine.streamAged(request),
            case .none = machine.streamAged(request)
        else {
            Issue.record("the maximum age ended the wrong POST, or one twice")
            return
        }
    }

    /// A short POST carries what is unsent from where the last one ended, with the request timeout.
    @Test func aShortPostCarriesWhatIsUnsent() throws {
        var machine = self.machine(streaming: false)
        let request = try #require(self.request(of: machine.append(ByteBuffer(string: "abc"), acknowledgementDue: false)))
        guard case .sendBatch(request, offset: 0, timeout: .seconds(30)) = machine.connectionReady(request) else {
            Issue.record("the short POST was not sent from offset 0")
            return
        }
        machine.sentBatch(upTo: 3)
        #expect(machine.state == .awaitingResponse(request: request, endedStream: false))
        guard case .none = machine.append(ByteBuffer(string: "d"), acknowledgementDue: false) else {
            Issue.record("a second short POST went out while the first awaited its answer")
            return
        }
        let next = try #require(self.request(of: machine.responseEnded(request, acknowledgementDue: false)))
        guard case .sendBatch(next, offset: 3, _) = machine.connectionReady(next) else {
            Issue.record("the next short POST did not start where the last ended")
            return
        }
    }

    /// Acknowledgements free bytes, open the send window, count as progress and never move what was sent backwards;
    /// one past what was sent is reported.
    @Test func acknowledgementsFreeBytesAndOpenTheWindow() throws {
        var machine = self.machine()
        let request = try self.opened(&machine, with: String(repeating: "x", count: 100))
        #expect(!machine.isWritable)
        self.writeAll(&machine)
        _ = machine.requestFailed(request, error: Cut(), staleConnection: false)
        #expect(machine.failures == 1)
        let advanced = machine.acknowledge(60)
        #expect(advanced == .advanced && machine.isWritable && machine.failures == 0)
        let again = machine.acknowledge(60)
        let beyond = machine.acknowledge(101)
        #expect(again == .unchanged && beyond == .beyondProduced)
    }

    /// A POST on a stale connection goes again at once from the acknowledgement, uncounted.
    @Test func aStaleConnectionIsReplacedAtOnce() throws {
        var machine = self.machine()
        let request = try self.opened(&machine, with: "abc")
        self.writeAll(&machine)
        guard case .reconnect = machine.requestFailed(request, error: Cut(), staleConnection: true) else {
            Issue.record("a stale connection was not replaced at once")
            return
        }
        #expect(machine.state == .idle && machine.sentUpTo == 0 && machine.failures == 0)
        guard case .connect = machine.pump(acknowledgementDue: false) else {
            Issue.record("the bytes of the stale POST were not sent again")
            return
        }
    }

    /// Failures in a row back off (100 ms, doubling) from the acknowledgement; one past the limit ends the connection.
    @Test func failuresBackOffAndTooManyEndTheConnection() throws {
        var machine = self.machine(streaming: false)
        var request = try self.opened(&machine, with: "abc")
        machine.sentBatch(upTo: 3)
        for (failures, delay) in [(1, TimeAmount.milliseconds(100)), (2, .milliseconds(200))] {
            guard case .retry(after: delay, failures: failures, _) = machine.requestFailed(request, error: Cut(), staleConnection: false) else {
                Issue.record("failure \(failures) did not wait \(delay)")
                return
            }
            #expect(machine.state == .waitingToRetry && machine.sentUpTo == 0)
            guard case .none = machine.append(ByteBuffer(string: "d"), acknowledgementDue: false) else {
                Issue.record("a POST went out during the retry wait")
                return
            }
            request = try #require(self.request(of: machine.retryDue(acknowledgementDue: false)))
            _ = machine.connectionReady(request)
        }
        guard case .fail(let error) = machine.requestFailed(request, error: Cut(), staleConnection: false) else {
            Issue.record("the third failure in a row (limit 2) did not end the connection")
            return
        }
        #expect(error is Cut && machine.state == .closed)
        guard case .none = machine.append(ByteBuffer(string: "e"), acknowledgementDue: true), case .none = machine.retryDue(acknowledgementDue: true)
        else {
            Issue.record("a closed upstream asked for a POST")
            return
        }
    }

    /// Events of a POST that is no longer the current one change nothing; a retry after the POST was made again is
    /// ignored too.
    @Test func eventsOfAnAbandonedPostAreIgnored() throws {
        var machine = self.machine()
        let first = try self.opened(&machine, with: "abc")
        _ = machine.requestFailed(first, error: Cut(), staleConnection: false)
        machine.abandon()
        let second = try #require(self.request(of: machine.pump(acknowledgementDue: false)))
        guard case .none = machine.retryDue(acknowledgementDue: false), case .none = machine.connectionReady(first),
            case .none = machine.responseEnded(first, acknowledgementDue: false),
            case .none = machine.requestFailed(first, error: Cut(), staleConnection: false),
            case .none = machine.streamingRefused(first, status: .lengthRequired)
        else {
            Issue.record("an abandoned POST's event was acted on")
            return
        }
        #expect(machine.state == .connecting(request: second))
    }

    /// Two streaming POSTs cut in a row while their bodies were open move upstream to short POSTs; one that this
    /// side ended and that was answered starts the count again.
    @Test func streamingPostsCutTwiceInARowSwitchToShortPosts() throws {
        var machine = self.machine()
        var request = try self.opened(&machine, with: "abc")
        guard case .retry = machine.requestFailed(request, error: Cut(), staleConnection: false) else {
            Issue.record("the first cut was not retried")
            return
        }
        request = try #require(self.request(of: machine.retryDue(acknowledgementDue: false)))
        _ = machine.connectionReady(request)
        _ = machine.endStream()
        // Answered: the bytes it carried are unacknowledged still, so the next POST goes out at once.
        request = try #require(self.request(of: machine.responseEnded(request, acknowledgementDue: false)))
        _ = machine.connectionReady(request)
        guard case .retry = machine.requestFailed(request, error: Cut(), staleConnection: false) else {
            Issue.record("a cut after an answered POST counted as the second in a row")
            return
        }
        request = try #require(self.request(of: machine.retryDue(acknowledgementDue: false)))
        _ = machine.connectionReady(request)
        guard case .switchToBatches(let reason) = machine.requestFailed(request, error: Cut(), staleConnection: false) else {
            Issue.record("the second cut in a row did not switch to short POSTs")
            return
        }
        #expect(reason.contains("cut before it ended 2 times in a row"))
    }

    /// A 411 (or 413, 400) to a streaming POST switches to short POSTs, from the acknowledgement; a short POST's is
    /// not a reason to switch.
    @Test func aRefusedStreamingBodySwitchesToShortPostsFromTheAcknowledgement() throws {
        var machine = self.machine()
        let request = try self.opened(&machine, with: "abcdef")
        self.writeAll(&machine)
        _ = machine.acknowledge(2)
        guard case .switchToBatches(let reason) = machine.streamingRefused(request, status: .lengthRequired) else {
            Issue.record("a 411 to a streaming POST did not switch to short POSTs")
            return
        }
        #expect(reason.contains("411"))
        machine.switchToBatches()
        #expect(machine.mode == .batch && machine.state == .idle && machine.sentUpTo == 2)
        let next = try #require(self.request(of: machine.pump(acknowledgementDue: false)))
        guard case .sendBatch(next, offset: 2, _) = machine.connectionReady(next) else {
            Issue.record("short POSTs did not go on from the acknowledgement")
            return
        }
        guard case .none = machine.streamingRefused(next, status: .lengthRequired) else {
            Issue.record("a 411 to a short POST asked to switch again")
            return
        }
    }

    /// The watchdog arms only for a streaming POST with bytes awaiting acknowledgement, once; it switches to short POSTs
    /// when nothing was acknowledged meanwhile, and any acknowledgement disarms it.
    @Test func theWatchdogSwitchesOnlyWhenNothingWasAcknowledged() throws {
        var machine = self.machine()
        let armedWithNothingSent = machine.armWatchdog()
        _ = try self.opened(&machine, with: "abcdef")
        self.writeAll(&machine)
        let armed = machine.armWatchdog()
        let armedTwice = machine.armWatchdog()
        let reason = machine.watchdogFired()
        #expect(!armedWithNothingSent && armed && !armedTwice)
        #expect(reason?.contains("no acknowledgement within") == true)

        let armedAgain = machine.armWatchdog()
        _ = machine.acknowledge(3)
        let reasonAfterAcknowledgement = machine.watchdogFired()
        _ = machine.acknowledge(6)
        let armedWithAllAcknowledged = machine.armWatchdog()
        #expect(armedAgain && reasonAfterAcknowledgement == nil && !armedWithAllAcknowledged)

        var polling = self.machine(streaming: false)
        _ = try self.opened(&polling, with: "abc")
        let armedForShortPosts = polling.armWatchdog()
        #expect(!armedForShortPosts)
    }

    /// Closing lets the bytes go and ignores every event after.
    @Test func closingLetsTheBytesGo() throws {
        var machine = self.machine()
        let request = try self.opened(&machine, with: "abc")
        machine.close()
        #expect(machine.log.unacknowledgedBytes == 0 && !machine.hasUnsentBytes)
        guard case .none = machine.endStream(), case .none = machine.responseEnded(request, acknowledgementDue: true) else {
            Issue.record("a closed upstream acted on an event")
            return
        }
        let armedAfterClose = machine.armWatchdog()
        #expect(!armedAfterClose)
    }
}
