import NIOCore
import Testing

@testable import CulvertTransport

/// Every transition of the server end of a chunked or polling connection, with no sockets and the time passed in.
struct HTTPServerConnectionStateMachineTests {
    private typealias Machine = HTTPServerConnectionStateMachine

    private static let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
    private static let settings = HTTPTransportServerSettings(
        idleTimeout: .seconds(60), streamResponseLimitBytes: 1000, maximumPollResponseBytes: 1000, sendWindowBytes: 100
    )

    private func machine() -> Machine { Machine(settings: Self.settings, now: Self.start) }

    /// Holds a GET and returns it.
    private func held(
        _ machine: inout Machine, _ mode: Machine.DownMode, acknowledged: UInt64 = 0, signed: Bool = true, byteLimit: Int? = nil
    ) throws -> Machine.Response {
        let answer = machine.downRequest(
            mode: mode, http10: false, acknowledged: acknowledged, signed: signed, shape: .binary, byteLimit: byteLimit, now: Self.start
        )
        guard case .hold(let response, _, _) = answer else {
            Issue.record("the GET was not held: \(answer)")
            throw CancellationError()
        }
        return response
    }

    private func bytes(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }

    /// A poll held with nothing to send is answered at its hold time with the upstream acknowledgement alone; bytes
    /// the session sends while it is held answer it at once.
    @Test func aPollIsAnsweredAsSoonAsThereAreBytesOrAtItsHoldTime() throws {
        var machine = self.machine()
        let poll = try self.held(&machine, .poll)
        do {
            let result = machine.pump()
            #expect(result == .none)
        }
        do {
            let result = machine.responseTimerFired(poll.id)
            #expect(result == .finish(poll, .complete([.acknowledge(0)])))
        }
        #expect(machine.response == nil)

        let next = try self.held(&machine, .poll)
        do {
            let result = machine.send(self.bytes("hi"))
            #expect(result == .finish(next, .complete([.acknowledge(0), .data(offset: 0, payload: self.bytes("hi"))])))
        }
        do {
            let result = machine.responseTimerFired(next.id)
            #expect(result == .none, "the answered poll's timer answered it again")
        }
    }

    /// A streaming GET starts acknowledging the upstream bytes so far and takes the session's bytes as they come, from
    /// the client's acknowledgement.
    @Test func aStreamingResponseCarriesBytesFromTheClientsAcknowledgement() throws {
        var machine = self.machine()
        _ = machine.send(self.bytes("abcdef"))
        _ = machine.uploadStarted(now: Self.start)
        _ = machine.uploadRecord(.data(offset: 0, payload: self.bytes("up")), signed: true, now: Self.start)
        let answer = machine.downRequest(mode: .stream, http10: false, acknowledged: 2, signed: true, shape: .binary, byteLimit: nil, now: Self.start)
        guard case .hold(let response, replacing: .none, acknowledging: 2) = answer else {
            Issue.record("the streaming GET did not start with an ACK of the 2 upstream bytes: \(answer)")
            return
        }
        #expect(response.nextOffset == 2 && !response.closeDelimited)
        do {
            let result = machine.pump()
            #expect(result == .writeStream)
        }
        #expect(machine.unsentPieces().map { String(buffer: $0.bytes) } == ["cdef"])
        machine.wroteToResponse(wireBytes: 20, payloadBytes: 4, endingAt: 6)
        do {
            let result = machine.streamWriteFinished(full: false)
            #expect(result == .none)
        }
        do {
            let result = machine.pump()
            #expect(result == .none, "written bytes were asked for again")
        }
    }

    /// A streaming response ends at its payload limit, its wire limit (small answers) or when a piece did not fit.
    @Test func aStreamingResponseEndsAtItsLimits() throws {
        var open = self.machine()
        let response = try self.held(&open, .stream, byteLimit: 2000)
        #expect(response.payloadLimit == 1000 - 64 && response.wireLimit == 2000)
        var full = open
        do {
            let result = full.streamWriteFinished(full: true)
            #expect(result == .finish(response, .endStream(closeRecord: false, closeConnection: false)))
        }
        var atPayloadLimit = open
        atPayloadLimit.wroteToResponse(wireBytes: 950, payloadBytes: 936, endingAt: 936)
        guard case .finish = atPayloadLimit.streamWriteFinished(full: false) else {
            Issue.record("a response at its payload limit stayed open")
            return
        }
        var atWireLimit = open
        atWireLimit.wroteToResponse(wireBytes: 2000, payloadBytes: 10, endingAt: 10)
        guard case .finish = atWireLimit.streamWriteFinished(full: false) else {
            Issue.record("a response at its wire limit stayed open")
            return
        }
    }

    /// A streaming answer to an HTTP/1.0 request cannot be chunked: it ends by closing its connection.
    @Test func anHTTP10StreamingResponseEndsByClosingItsConnection() throws {
        var machine = self.machine()
        let answer = machine.downRequest(mode: .stream, http10: true, acknowledged: 0, signed: true, shape: .binary, byteLimit: nil, now: Self.start)
        guard case .hold(let response, _, _) = answer else {
            Issue.record("the GET was not held")
            return
        }
        #expect(response.closeDelimited)
        do {
            let result = machine.responseTimerFired(response.id)
            #expect(result == .finish(response, .endStream(closeRecord: false, closeConnection: true)))
        }
    }

    /// A newer GET replaces the one held (the client gave up on it), which is answered first.
    @Test func aNewerGetReplacesTheOneHeld() throws {
        var machine = self.machine()
        let old = try self.held(&machine, .poll)
        let answer = machine.downRequest(mode: .poll, http10: false, acknowledged: 0, signed: true, shape: .text, byteLimit: nil, now: Self.start)
        guard case .hold(let new, replacing: .finish(old, .complete([.acknowledge(0)])), _) = answer else {
            Issue.record("the older GET was not answered first: \(answer)")
            return
        }
        #expect(new.id != old.id && machine.response == new)
        do {
            let result = machine.responseTimerFired(old.id)
            #expect(result == .none)
        }
        do {
            let result = machine.responseConnectionClosed(old.id)
            #expect(!result)
        }
        do {
            let result = machine.responseConnectionClosed(new.id)
            #expect(result && machine.response == nil)
        }
    }

    /// Acknowledgements from GETs free the session's bytes and open the send window; one past what was sent breaks the
    /// protocol.
    @Test func acknowledgementsOpenTheWindowAndOnesPastWhatWasSentAreViolations() throws {
        var machine = self.machine()
        _ = machine.send(ByteBuffer(repeating: 1, count: 100))
        #expect(!machine.isWritable)
        _ = try self.held(&machine, .poll, acknowledged: 50)
        #expect(machine.isWritable)
        let answer = machine.downRequest(mode: .poll, http10: false, acknowledged: 101, signed: true, shape: .binary, byteLimit: nil, now: Self.start)
        #expect(answer == .violation("the client acknowledged bytes never sent"))
    }

    /// Once the session is authenticated, the unsigned GET held is ended (a signed one stays), and an unsigned GET gets
    /// the rest of the handshake, never a byte after it, or 403 when none of it is left.
    @Test func afterAuthenticationAnUnsignedGetReadsOnlyTheHandshake() throws {
        var machine = self.machine()
        let unsigned = try self.held(&machine, .stream, signed: false)
        _ = machine.send(self.bytes("WELCOME"))
        machine.wroteToResponse(wireBytes: 20, payloadBytes: 7, endingAt: 7)
        guard case .finish(let ended, .endStream(closeRecord: false, closeConnection: false)) = machine.sessionAuthenticated(),
            ended.id == unsigned.id
        else {
            Issue.record("authentication did not end the unsigned GET held")
            return
        }
        _ = machine.send(self.bytes("secret"))

        let late = machine.downRequest(mode: .poll, http10: false, acknowledged: 3, signed: false, shape: .binary, byteLimit: nil, now: Self.start)
        #expect(late == .complete([.data(offset: 3, payload: self.bytes("COME"))], forget: false))
        let stranger = machine.downRequest(mode: .poll, http10: false, acknowledged: 7, signed: false, shape: .binary, byteLimit: nil, now: Self.start)
        #expect(stranger == .forbidden)

        let signed = try self.held(&machine, .stream)
        do {
            let result = machine.sessionAuthenticated()
            #expect(result == .none, "a second authentication ended a signed GET")
        }
        #expect(machine.response == signed)
    }

    /// POST records: new bytes are delivered once, in order; a gap or an acknowledgement past what was sent breaks the
    /// protocol; a close record ends the connection; an unsigned POST after authentication is read no further.
    @Test func uploadRecordsDeliverEachByteOnce() {
        var machine = self.machine()
        do {
            let result = machine.uploadStarted(now: Self.start)
            #expect(result)
        }
        do {
            let result = machine.uploadRecord(.data(offset: 0, payload: self.bytes("abc")), signed: false, now: Self.start)
            #expect(result == .deliver(self.bytes("abc")))
        }
        do {
            let result = machine.uploadRecord(.data(offset: 1, payload: self.bytes("bcd")), signed: false, now: Self.start)
            #expect(result == .deliver(self.bytes("d")))
        }
        do {
            let result = machine.uploadRecord(.data(offset: 0, payload: self.bytes("ab")), signed: false, now: Self.start)
            #expect(result == .none)
        }
        do {
            let result = machine.uploadRecord(.data(offset: 9, payload: self.bytes("x")), signed: true, now: Self.start)
            #expect(result == .violation("upstream bytes skipped an offset"))
        }
        do {
            let result = machine.uploadRecord(.acknowledge(1), signed: true, now: Self.start)
            #expect(result == .violation("the client acknowledged bytes never sent"))
        }
        do {
            let result = machine.uploadRecord(.close, signed: true, now: Self.start)
            #expect(result == .close)
        }
        _ = machine.sessionAuthenticated()
        do {
            let result = machine.uploadRecord(.data(offset: 4, payload: self.bytes("e")), signed: false, now: Self.start)
            #expect(result == .stop)
        }
        do {
            let result = machine.uploadFinished(now: Self.start)
            #expect(result == 4)
        }
    }

    /// Upstream bytes are acknowledged on a streaming response, once per gathering of reads, and only with news.
    @Test func upstreamBytesAreAcknowledgedOnAStreamingResponseOnly() throws {
        var polling = self.machine()
        _ = try self.held(&polling, .poll)
        _ = polling.uploadRecord(.data(offset: 0, payload: self.bytes("a")), signed: true, now: Self.start)
        do {
            let result = polling.scheduleAcknowledgement()
            #expect(!result)
        }

        var machine = self.machine()
        _ = try self.held(&machine, .stream)
        _ = machine.uploadRecord(.data(offset: 0, payload: self.bytes("a")), signed: true, now: Self.start)
        do {
            let result = machine.scheduleAcknowledgement()
            #expect(result)
        }
        do {
            let result = machine.scheduleAcknowledgement()
            #expect(!result, "a second ACK write was scheduled before the first ran")
        }
        _ = machine.uploadRecord(.data(offset: 1, payload: self.bytes("b")), signed: true, now: Self.start)
        do {
            let result = machine.acknowledgementToWrite()
            #expect(result == 2)
        }
        do {
            let result = machine.scheduleAcknowledgement()
            #expect(result)
        }
        do {
            let result = machine.acknowledgementToWrite()
            #expect(result == nil, "an ACK with no news was written")
        }
    }

    /// The connection is idle only with no GET held, no POST open, and no request for the whole idle timeout.
    @Test func idleOnlyWithNothingHeldOrOpenForTheWholeTimeout() throws {
        var machine = self.machine()
        let later = Self.start + .seconds(60)
        #expect(!machine.isIdle(now: Self.start + .seconds(59)))
        #expect(machine.isIdle(now: later))
        let poll = try self.held(&machine, .poll)
        #expect(!machine.isIdle(now: later + .seconds(60)), "idle with a GET held")
        _ = machine.responseTimerFired(poll.id)
        _ = machine.uploadStarted(now: later)
        #expect(!machine.isIdle(now: later + .seconds(120)), "idle with a POST open")
        _ = machine.uploadFinished(now: later + .seconds(1))
        #expect(!machine.isIdle(now: later + .seconds(60)))
        #expect(machine.isIdle(now: later + .seconds(61)))
    }

    /// Closing ends the GET held with the close record, or drops it when the close is not to be told; with the
    /// session's last bytes unfetched and no GET held the connection lingers, and the next GET gets them and the
    /// close record; then it is forgotten.
    @Test func closingEndsTheHeldGetOrLingersForTheNextOne() throws {
        var streaming = self.machine()
        let stream = try self.held(&streaming, .stream)
        do {
            let result = streaming.close(sendCloseRecord: true)
            #expect(result == .init(response: stream, ending: .endStream(closeRecord: true, closeConnection: false), lingers: false))
        }
        #expect(streaming.lifecycle == .forgotten)
        do {
            let result = streaming.close(sendCloseRecord: true)
            #expect(result == nil, "closed twice")
        }

        var polling = self.machine()
        let poll = try self.held(&polling, .poll)
        do {
            let result = polling.close(sendCloseRecord: true)
            #expect(result?.ending == .complete([.acknowledge(0), .close]))
        }
        _ = poll

        var dropped = self.machine()
        let droppedStream = try self.held(&dropped, .stream)
        do {
            let result = dropped.close(sendCloseRecord: false)
            #expect(result == .init(response: droppedStream, ending: nil, lingers: false))
        }

        var lingering = self.machine()
        _ = lingering.send(self.bytes("GOAWAY"))
        do {
            let result = lingering.close(sendCloseRecord: true)
            #expect(result == .init(response: nil, ending: nil, lingers: true))
        }
        #expect(lingering.lifecycle == .lingering)
        do {
            let result = lingering.send(self.bytes("late"))
            #expect(result == .none)
        }
        let last = lingering.downRequest(mode: .poll, http10: false, acknowledged: 2, signed: true, shape: .binary, byteLimit: nil, now: Self.start)
        #expect(last == .complete([.data(offset: 2, payload: self.bytes("AWAY")), .close], forget: true))
        #expect(lingering.lifecycle == .forgotten)
        let after = lingering.downRequest(mode: .poll, http10: false, acknowledged: 6, signed: true, shape: .binary, byteLimit: nil, now: Self.start)
        #expect(after == .complete([.close], forget: true))
        do {
            let result = lingering.uploadStarted(now: Self.start)
            #expect(!result, "a closed connection took a POST")
        }
    }
}
