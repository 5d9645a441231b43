import CulvertCore
import NIOCore
import Testing

@Suite struct MuxStateMachineTests {
    let target = TargetAddress(host: "127.0.0.1", port: 22)

    func openedPair(configuration: MuxConfiguration = MuxConfiguration()) throws
        -> (client: MuxStateMachine, server: MuxStateMachine, id: StreamID)
    {
        var client = MuxStateMachine(role: .client, configuration: configuration, peerMaximumDataPayload: 32768)
        var server = MuxStateMachine(role: .server, configuration: configuration, peerMaximumDataPayload: 32768)
        let (id, open) = try client.openStream(to: self.target)
        #expect(server.receive(open) == .openRequested(id, self.target))
        let ok = try unwrap(server.acceptSucceeded(id))
        #expect(client.receive(ok) == .opened(id))
        return (client, server, id)
    }

    /// A client and a server multiplexer with `count` streams opened from the client.
    func openedStreams(_ count: Int, configuration: MuxConfiguration) throws
        -> (client: MuxStateMachine, server: MuxStateMachine, ids: [StreamID])
    {
        var client = MuxStateMachine(role: .client, configuration: configuration, peerMaximumDataPayload: 32768)
        var server = MuxStateMachine(role: .server, configuration: configuration, peerMaximumDataPayload: 32768)
        var ids: [StreamID] = []
        for _ in 0..<count {
            let (id, open) = try client.openStream(to: self.target)
            _ = server.receive(open)
            _ = client.receive(try unwrap(server.acceptSucceeded(id)))
            ids.append(id)
        }
        return (client, server, ids)
    }

    func payload(_ count: Int) -> ByteBuffer { ByteBuffer(repeating: 0x41, count: count) }

    /// Client streams get odd ids; OPEN/OPEN_OK give both sides the initial window as credit.
    @Test func openGivesBothSidesInitialCredit() throws {
        let (client, server, id) = try self.openedPair()
        #expect(id == 1)
        #expect(client.sendableBytes(id) == 32768)
        #expect(server.sendableBytes(id) == 32768)
    }

    /// A sender stops at the receiver's window; WINDOW after half consumption lets it continue.
    @Test func creditStopsTheSenderUntilTheReaderConsumes() throws {
        var (client, server, id) = try self.openedPair(configuration: MuxConfiguration(initialStreamWindow: 64 * 1024))
        var sent = 0
        while client.sendableBytes(id) > 0 {
            let count = client.sendableBytes(id)
            let frame = client.sendData(id, payload: self.payload(count))
            guard case .deliver = server.receive(frame) else { Issue.record("not delivered"); return }
            sent += count
        }
        #expect(sent == 64 * 1024)
        // Consuming less than half returns nothing yet.
        #expect(server.consumed(id, bytes: 16 * 1024).frames.isEmpty)
        let (frames, _) = server.consumed(id, bytes: 16 * 1024)
        let update = try #require(frames.first)
        guard case .window(id, let increment) = update else { Issue.record("no WINDOW"); return }
        #expect(increment >= 32 * 1024)
        #expect(client.receive(update) == .creditAvailable(id))
        #expect(client.sendableBytes(id) > 0)
    }

    /// DATA beyond the granted credit resets only that stream with a flow-control error.
    @Test func dataBeyondCreditResetsTheStream() throws {
        var (_, server, id) = try self.openedPair(configuration: MuxConfiguration(initialStreamWindow: 1024))
        let action = server.receive(.data(streamID: id, flags: [], payload: self.payload(2048)))
        guard case .reply(.rst(id, .flowControlError, _), closeStream: id, _) = action else {
            Issue.record("expected RST, got \(action)"); return
        }
        #expect(!server.contains(id))
    }

    /// A WINDOW that would push credit past 2^31-1 resets the stream.
    @Test func windowOverflowResetsTheStream() throws {
        var (client, _, id) = try self.openedPair()
        let action = client.receive(.window(streamID: id, increment: UInt32.max))
        guard case .reply(.rst(id, .flowControlError, _), closeStream: id, _) = action else {
            Issue.record("expected RST, got \(action)"); return
        }
    }

    /// A frame for a stream that never existed is answered with RST(unknownStream); one for a finished stream is
    /// ignored as in flight.
    @Test func framesForUnknownStreams() throws {
        var (client, server, id) = try self.openedPair()
        let never = server.receive(.data(streamID: 99, flags: [], payload: self.payload(1)))
        guard case .reply(.rst(99, .unknownStream, _), nil, _) = never else { Issue.record("got \(never)"); return }
        let reset = try unwrap(client.localReset(id, code: .cancelled, message: "bye"))
        guard case .reset = server.receive(reset) else { Issue.record("RST not applied"); return }
        guard case .ignore = server.receive(.data(streamID: id, flags: [], payload: self.payload(1))) else {
            Issue.record("late DATA not ignored"); return
        }
    }

    /// A peer opening a stream in the wrong id space or reusing an id breaks the session.
    @Test func badOpenIDsAreSessionErrors() throws {
        var server = MuxStateMachine(role: .server, configuration: MuxConfiguration(), peerMaximumDataPayload: 1024)
        guard case .sessionError(.protocolError, _) = server.receive(.open(streamID: 2, initialWindow: 1, target: self.target))
        else { Issue.record("even id accepted"); return }
        _ = server.receive(.open(streamID: 5, initialWindow: 1, target: self.target))
        guard case .sessionError(.protocolError, _) = server.receive(.open(streamID: 3, initialWindow: 1, target: self.target))
        else { Issue.record("lower id accepted"); return }
    }

    /// FIN both ways, with everything consumed, completes and removes the stream.
    @Test func finBothWaysCompletesTheStream() throws {
        var (client, server, id) = try self.openedPair()
        let fin = try unwrap(client.localFinished(id))
        #expect(!fin.streamComplete)
        #expect(server.receive(fin.frame) == .remoteFinished(id, streamComplete: false))
        let serverFin = try unwrap(server.localFinished(id))
        #expect(serverFin.streamComplete)
        #expect(client.receive(serverFin.frame) == .remoteFinished(id, streamComplete: true))
        #expect(client.streamCount == 0 && server.streamCount == 0)
        #expect(client.committedMemory == 0 && server.committedMemory == 0)
    }

    /// DATA after FIN is a stream protocol error.
    @Test func dataAfterFinResetsTheStream() throws {
        var (client, server, id) = try self.openedPair()
        _ = server.receive(try unwrap(client.localFinished(id)).frame)
        let action = server.receive(.data(streamID: id, flags: [], payload: self.payload(1)))
        guard case .reply(.rst(id, .protocolError, _), closeStream: id, _) = action else {
            Issue.record("got \(action)"); return
        }
    }

    /// A stalled reader holds only its own window: other streams keep full credit, and the session's receive
    /// memory never exceeds the limit.
    @Test func stalledReaderDoesNotStarveOtherStreams() throws {
        let configuration = MuxConfiguration(initialStreamWindow: 256 * 1024, sessionMemoryLimit: 1024 * 1024)
        var (client, server, ids) = try self.openedStreams(2, configuration: configuration)
        let (stalled, busy) = (ids[0], ids[1])
        // The stalled stream's sender fills its window; nobody consumes.
        while client.sendableBytes(stalled) > 0 {
            _ = server.receive(client.sendData(stalled, payload: self.payload(client.sendableBytes(stalled))))
        }
        // The busy stream moves 8 MiB, consumed as it arrives.
        var moved = 0
        while moved < 8 * 1024 * 1024 {
            let count = client.sendableBytes(busy)
            #expect(count > 0, "busy stream starved after \(moved) bytes")
            if count == 0 { return }
            guard case .deliver = server.receive(client.sendData(busy, payload: self.payload(count))) else { return }
            moved += count
            for frame in server.consumed(busy, bytes: count).frames { _ = client.receive(frame) }
            #expect(server.committedMemory <= configuration.sessionMemoryLimit)
        }
        #expect(client.sendableBytes(stalled) == 0)
    }

    /// When the session memory is committed, new streams start with less credit (but never none: each has a
    /// floor), and get more once memory is released; the limit is never exceeded.
    @Test func sessionMemoryLimitWithholdsCredit() throws {
        let configuration = MuxConfiguration(initialStreamWindow: 256 * 1024, sessionMemoryLimit: 512 * 1024)
        var (client, server, ids) = try self.openedStreams(3, configuration: configuration)
        #expect(server.committedMemory <= 512 * 1024)
        let floor = client.sendableBytes(ids[2])
        #expect(floor > 0 && floor < 256 * 1024)
        // Fill stream 1, then consume it: the released memory goes to the starved stream 3.
        var frames: [Frame] = []
        while client.sendableBytes(ids[0]) > 0 {
            let count = client.sendableBytes(ids[0])
            _ = server.receive(client.sendData(ids[0], payload: self.payload(count)))
            frames += server.consumed(ids[0], bytes: count).frames
            #expect(server.committedMemory <= 512 * 1024)
        }
        for frame in frames { _ = client.receive(frame) }
        #expect(frames.contains { $0.streamID == ids[2] })
        #expect(client.sendableBytes(ids[2]) > floor)
    }

    /// Streams whose windows grew and then went idle keep their credit (it cannot be taken back), yet every
    /// stream opened after them still gets credit to send with, up to the stream limit, within the memory limit.
    @Test func idleStreamsWithGrownWindowsNeverLeaveNewStreamsWithoutCredit() throws {
        let configuration = MuxConfiguration(
            initialStreamWindow: 64 * 1024, maximumStreamWindow: 1024 * 1024, sessionMemoryLimit: 1024 * 1024,
            maximumStreams: 64
        )
        var (client, server, ids) = try self.openedStreams(3, configuration: configuration)
        // Three bulk streams whose readers keep up: their windows grow, then they go idle holding the credit.
        for id in ids {
            for _ in 0..<500 {
                let count = client.sendableBytes(id)
                guard count > 0 else { break }
                _ = server.receive(client.sendData(id, payload: self.payload(count)))
                for frame in server.consumed(id, bytes: count).frames { _ = client.receive(frame) }
            }
        }
        #expect(server.committedMemory > 3 * 64 * 1024)
        for _ in 3..<64 {
            let (id, open) = try client.openStream(to: self.target)
            _ = server.receive(open)
            _ = client.receive(try unwrap(server.acceptSucceeded(id)))
            #expect(client.sendableBytes(id) > 0, "stream \(id) opened without credit")
            #expect(server.committedMemory <= 1024 * 1024)
        }
    }

    /// A stream that started with only its floor of credit keeps getting credit as its reader consumes, even
    /// in single bytes (it never reaches half its window).
    @Test func starvedStreamIsToppedUpAsItsReaderConsumes() throws {
        let configuration = MuxConfiguration(initialStreamWindow: 256 * 1024, sessionMemoryLimit: 512 * 1024)
        var (client, server, ids) = try self.openedStreams(3, configuration: configuration)
        for round in 0..<100 {
            #expect(client.sendableBytes(ids[2]) > 0, "no credit in round \(round)")
            _ = server.receive(client.sendData(ids[2], payload: self.payload(1)))
            for frame in server.consumed(ids[2], bytes: 1).frames { _ = client.receive(frame) }
        }
    }

    /// With many streams starved of memory, memory released goes to them in the order they started waiting, and a
    /// starved stream that reads is topped up from its floor without the others being touched.
    @Test func starvedStreamsAreFedInTheOrderTheyStarved() throws {
        let configuration = MuxConfiguration(initialStreamWindow: 16 * 1024, sessionMemoryLimit: 256 * 1024, maximumStreams: 64)
        var (client, server, ids) = try self.openedStreams(64, configuration: configuration)
        // Only the first streams got a full window; the rest wait at their floor.
        let starved = ids.filter { client.sendableBytes($0) < 16 * 1024 }
        #expect(starved.count > 40)
        // The starved stream at the back reads a byte: only it gets credit.
        let last = try #require(starved.last)
        _ = server.receive(client.sendData(last, payload: self.payload(1)))
        #expect(server.consumed(last, bytes: 1).frames.map(\.streamID) == [last])
        // A full stream closes: its memory goes to the streams that starved first.
        let full = ids[0]
        _ = client.receive(try unwrap(server.localReset(full, code: .cancelled, message: "done")))
        let fed = server.consumed(full, bytes: 0).frames.map(\.streamID)
        #expect(!fed.isEmpty)
        #expect(fed == Array(starved.prefix(fed.count)), "fed \(fed), starved in order \(starved)")
    }

    /// A stream whose reader keeps up grows its window beyond the initial size, up to the maximum.
    @Test func windowGrowsForAFastReader() throws {
        let configuration = MuxConfiguration(initialStreamWindow: 64 * 1024, maximumStreamWindow: 1024 * 1024)
        var (client, server, id) = try self.openedPair(configuration: configuration)
        var biggest = 0
        for _ in 0..<2000 {
            let count = client.sendableBytes(id)
            guard count > 0 else { break }
            _ = server.receive(client.sendData(id, payload: self.payload(count)))
            for frame in server.consumed(id, bytes: count).frames {
                if case .window(_, let increment) = frame { biggest = max(biggest, Int(increment)) }
                _ = client.receive(frame)
            }
        }
        #expect(biggest > 64 * 1024)
        #expect(server.committedMemory <= 1024 * 1024)
    }

    /// Opening past the stream limit fails locally; a peer's OPEN past it gets OPEN_FAIL(tooManyStreams).
    @Test func streamLimit() throws {
        let configuration = MuxConfiguration(maximumStreams: 1)
        var client = MuxStateMachine(role: .client, configuration: configuration, peerMaximumDataPayload: 1024)
        var server = MuxStateMachine(role: .server, configuration: configuration, peerMaximumDataPayload: 1024)
        _ = try client.openStream(to: self.target)
        #expect(throws: MuxError.tooManyStreams(1)) { _ = try client.openStream(to: self.target) }
        _ = server.receive(.open(streamID: 1, initialWindow: 1024, target: self.target))
        guard case .reply(.openFail(3, .tooManyStreams, _), nil, _) =
            server.receive(.open(streamID: 3, initialWindow: 1024, target: self.target))
        else { Issue.record("second stream accepted"); return }
    }
}

struct MissingValue: Error {}

/// Unwraps a value produced by a mutating call (which `#require` cannot wrap).
func unwrap<T>(_ value: T?, sourceLocation: SourceLocation = #_sourceLocation) throws -> T {
    guard let value else {
        Issue.record("unexpected nil", sourceLocation: sourceLocation)
        throw MissingValue()
    }
    return value
}
