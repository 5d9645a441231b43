import NIOCore
import Testing

@testable import CulvertTransport

/// Every transition of the client's downstream machine, with no sockets and no clock.
struct HTTPDownstreamStateMachineTests {
    private struct Cut: Error {}

    private static let settings = HTTPTransportClientSettings(requestTimeout: .seconds(30), pollResponseTimeout: .seconds(45), maximumRetries: 2)

    private func machine(streaming: Bool = true) -> HTTPDownstreamStateMachine {
        HTTPDownstreamStateMachine(streaming: streaming, settings: Self.settings)
    }

    /// The request a `.connect` or `.reconnect` names, or nil for any other action.
    private func request(of action: HTTPDownstreamStateMachine.Action) -> UInt64? {
        switch action {
        case .connect(let request), .reconnect(let request): request
        default: nil
        }
    }

    /// Starts a GET and gives it its connection; returns its number.
    private func started(_ machine: inout HTTPDownstreamStateMachine) throws -> UInt64 {
        let request = try #require(self.request(of: machine.begin()))
        guard case .send = machine.connectionReady(request) else {
            Issue.record("a GET whose connection is ready is sent")
            return request
        }
        return request
    }

    /// Fails GET `request`, waits out the retry and gives the next GET its connection; returns its number.
    private func retried(_ machine: inout HTTPDownstreamStateMachine, after request: UInt64) throws -> UInt64 {
        _ = machine.requestFailed(request, error: Cut(), staleConnection: false)
        let next = try #require(self.request(of: machine.retryDue()))
        _ = machine.connectionReady(next)
        return next
    }

    /// One GET at a time: begin while one is on its way asks for nothing more.
    @Test func beginStartsOneGetAndNoSecondWhileItIsOnItsWay() throws {
        var machine = self.machine()
        let first = try #require(self.request(of: machine.begin()))
        #expect(machine.state == .requesting(request: first, responseStarted: false))
        guard case .none = machine.begin() else {
            Issue.record("a second GET was asked for while the first was on its way")
            return
        }
    }

    /// A ready connection sends the GET from the offset received so far, which also counts as acknowledged; a
    /// streaming GET has the request timeout (for its head), a poll the longer poll timeout.
    @Test func theGetAsksFromTheOffsetReceivedWithTheTimeoutOfItsMode() throws {
        var streaming = self.machine(streaming: true)
        let request = try #require(self.request(of: streaming.begin()))
        _ = streaming.accept(offset: 0, payload: ByteBuffer(string: "hello"))
        guard case .send(request, offset: 5, timeout: .seconds(30)) = streaming.connectionReady(request) else {
            Issue.record("the streaming GET did not ask from offset 5 with the request timeout")
            return
        }
        #expect(streaming.acknowledgedToServer == 5)

        var polling = self.machine(streaming: false)
        let poll = try #require(self.request(of: polling.begin()))
        guard case .send(poll, offset: 0, timeout: .seconds(45)) = polling.connectionReady(poll) else {
            Issue.record("the poll did not have the poll timeout")
            return
        }
    }

    /// The head ends a streaming GET's timeout (its body may last long); a poll's timeout runs until its end.
    @Test func theHeadCancelsTheTimeoutOfAStreamingGetOnly() throws {
        var streaming = self.machine(streaming: true)
        let request = try self.started(&streaming)
        guard case .cancelTimeout = streaming.responseHead(request) else {
            Issue.record("the streaming GET's head did not cancel its timeout")
            return
        }
        #expect(streaming.state == .requesting(request: request, responseStarted: true))

        var polling = self.machine(streaming: false)
        let poll = try self.started(&polling)
        guard case .none = polling.responseHead(poll) else {
            Issue.record("a poll's head cancelled its timeout")
            return
        }
    }

    /// A response that ends is followed at once by the next GET, and the failures in a row start again.
    @Test func anEndedResponseIsFollowedAtOnceByTheNextGet() throws {
        var machine = self.machine()
        let first = try self.started(&machine)
        let second = try self.retried(&machine, after: first)
        let next = try #require(self.request(of: machine.responseEnded(second)))
        #expect(next == second + 1)
        #expect(machine.failures == 0)
    }

    /// Events of a GET that is no longer the current one (abandoned, failed, or replaced) change nothing.
    @Test func eventsOfAnAbandonedGetAreIgnored() throws {
        var machine = self.machine()
        let first = try self.started(&machine)
        let second = try #require(self.request(of: machine.restart()))
        #expect(!machine.isCurrent(first))
        guard case .none = machine.connectionReady(first), case .none = machine.responseHead(first),
            case .none = machine.responseEnded(first), case .none = machine.requestFailed(first, error: Cut(), staleConnection: false)
        else {
            Issue.record("an abandoned GET's event was acted on")
            return
        }
        #expect(machine.state == .requesting(request: second, responseStarted: false))
        #expect(machine.failures == 0)
    }

    /// A GET that fails on a stale connection (closed while idle, or a proxy asking again for credentials) is made
    /// again at once on a new connection and does not count as a failure.
    @Test func aStaleConnectionIsReplacedAtOnceWithoutCountingAFailure() throws {
        var machine = self.machine()
        let first = try self.started(&machine)
        let again = try #require(self.request(of: machine.requestFailed(first, error: Cut(), staleConnection: true)))
        guard case .reconnect = machine.requestFailed(again, error: Cut(), staleConnection: true) else {
            Issue.record("a stale connection was not replaced at once")
            return
        }
        #expect(machine.failures == 0)
    }

    /// Failures in a row wait longer each time (100 ms, doubling); one past the limit ends the connection with the
    /// last error, and nothing is asked for after.
    @Test func failuresBackOffAndTooManyEndTheConnection() throws {
        var machine = self.machine()
        var request = try self.started(&machine)
        for (failures, delay) in [(1, TimeAmount.milliseconds(100)), (2, .milliseconds(200))] {
            guard case .retry(after: delay, failures: failures, _) = machine.requestFailed(request, error: Cut(), staleConnection: false) else {
                Issue.record("failure \(failures) did not wait \(delay)")
                return
            }
            #expect(machine.state == .waitingToRetry)
            request = try #require(self.request(of: machine.retryDue()))
            _ = machine.connectionReady(request)
        }
        guard case .fail(let error) = machine.requestFailed(request, error: Cut(), staleConnection: false) else {
            Issue.record("the third failure in a row (limit 2) did not end the connection")
            return
        }
        #expect(error is Cut)
        #expect(machine.state == .closed)
        guard case .none = machine.begin(), case .none = machine.retryDue(), case .none = machine.restart() else {
            Issue.record("a closed downstream asked for a GET")
            return
        }
    }

    /// Bytes delivered between failures count as progress: the backoff starts again from its first step.
    @Test func deliveredBytesStartTheFailureCountAgain() throws {
        var machine = self.machine()
        let first = try self.started(&machine)
        let second = try self.retried(&machine, after: first)
        let new = machine.accept(offset: 0, payload: ByteBuffer(string: "abc"))
        let seen = machine.accept(offset: 0, payload: ByteBuffer(string: "abc"))
        let skipping = machine.accept(offset: 9, payload: ByteBuffer(string: "x"))
        #expect(new == .deliver(ByteBuffer(string: "abc")) && seen == .duplicate && skipping == .gap)
        guard case .retry(after: .milliseconds(100), failures: 1, _) = machine.requestFailed(second, error: Cut(), staleConnection: false) else {
            Issue.record("the failure after progress did not start from the first backoff step")
            return
        }
    }

    /// A retry that comes after the downstream was already begun again (the body shape changed) asks for nothing.
    @Test func aRetryAfterTheGetWasMadeAgainIsIgnored() throws {
        var machine = self.machine()
        let first = try self.started(&machine)
        _ = machine.requestFailed(first, error: Cut(), staleConnection: false)
        let restarted = try #require(self.request(of: machine.restart()))
        guard case .none = machine.retryDue() else {
            Issue.record("a stale retry started a second GET")
            return
        }
        #expect(machine.isCurrent(restarted))
    }

    /// A streaming download acknowledges upstream after a short delay that gathers reads, at once past 256 KiB, and
    /// not at all when polling (each poll's offset acknowledges).
    @Test func aStreamingDownloadAcknowledgesLateSmallReadsAndAtOnceLargeOnes() throws {
        var machine = self.machine(streaming: true)
        let request = try self.started(&machine)
        _ = machine.responseHead(request)
        _ = machine.accept(offset: 0, payload: ByteBuffer(repeating: 1, count: 100))
        let afterFirstRead = machine.deliveredRead()
        _ = machine.accept(offset: 100, payload: ByteBuffer(repeating: 1, count: 100))
        let afterSecondRead = machine.deliveredRead()
        #expect(afterFirstRead == .armTimer)
        #expect(afterSecondRead == .none, "a second read re-armed the pending timer")

        let dueAtTimer = machine.acknowledgementTimerFired()
        #expect(dueAtTimer && machine.acknowledgementDue)
        let taken = machine.takeAcknowledgement()
        #expect(taken.offset == 200 && !taken.timerWasArmed)
        #expect(!machine.acknowledgementDue)
        let dueAtUnarmedTimer = machine.acknowledgementTimerFired()
        #expect(!dueAtUnarmedTimer, "a timer fired with nothing armed made an ACK due")

        _ = machine.accept(offset: 200, payload: ByteBuffer(repeating: 1, count: 100))
        let afterSmallRead = machine.deliveredRead()
        _ = machine.accept(offset: 300, payload: ByteBuffer(repeating: 1, count: Int(HTTPDownstreamStateMachine.acknowledgeAtOnceBytes)))
        let afterLargeRead = machine.deliveredRead()
        let dueAtReplacedTimer = machine.acknowledgementTimerFired()
        #expect(afterSmallRead == .armTimer && afterLargeRead == .acknowledgeNow)
        #expect(machine.acknowledgementDue)
        #expect(!dueAtReplacedTimer, "the timer the large read replaced made an ACK due a second time")

        var polling = self.machine(streaming: false)
        _ = try self.started(&polling)
        _ = polling.accept(offset: 0, payload: ByteBuffer(repeating: 1, count: 300_000))
        let afterPolledRead = polling.deliveredRead()
        #expect(afterPolledRead == .none)
    }

    /// A short POST takes the acknowledgement whether or not one was due, and says when a timer was pending.
    @Test func takingTheAcknowledgementClearsAPendingTimer() throws {
        var machine = self.machine(streaming: true)
        _ = try self.started(&machine)
        _ = machine.accept(offset: 0, payload: ByteBuffer(string: "abc"))
        let afterRead = machine.deliveredRead()
        let taken = machine.takeAcknowledgement()
        let dueAtTimer = machine.acknowledgementTimerFired()
        #expect(afterRead == .armTimer)
        #expect(taken.offset == 3 && taken.timerWasArmed)
        #expect(!dueAtTimer)
        #expect(machine.acknowledgedToServer == 3)
    }
}
