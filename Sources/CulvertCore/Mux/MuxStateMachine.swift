public import NIOCore

/// The stream multiplexer as a pure state machine: stream table, half-close, and per-stream credit flow control
/// bounded by a session-wide memory limit.
///
/// Receive side: every stream has a window (initially ``MuxConfiguration/initialStreamWindow``). Credit is
/// returned with WINDOW once half of the window has been consumed by the local reader. A stream whose reader keeps
/// up (nothing left unconsumed when credit is returned) doubles its window up to
/// ``MuxConfiguration/maximumStreamWindow``. Granted-but-unused credit plus unconsumed bytes, summed over all
/// streams, never exceeds ``MuxConfiguration/sessionMemoryLimit``: when it would, the stream is marked starved and
/// gets its credit as soon as memory is released. A reader that stops reading therefore stops only its own stream.
/// Every stream may always hold a small floor of credit (reserved for all streams there can be), so idle streams
/// with grown windows never leave a new stream without any.
public struct MuxStateMachine: Sendable {
    public enum Role: Sendable {
        /// Opens odd stream ids.
        case client
        /// Opens even stream ids.
        case server
    }

    public let configuration: MuxConfiguration
    private let role: Role
    private var streams: [StreamID: StreamState] = [:]
    /// Where the stream table's storage lies: the same address after a change means the table changed in place.
    package var streamTableAddress: UInt { withUnsafeBytes(of: self.streams) { $0.load(as: UInt.self) } }
    private var nextLocalStreamID: StreamID
    private var highestPeerStreamID: StreamID = 0
    private var committedReceiveMemory = 0
    /// Memory committed beyond each stream's floor, from the shared pool (see ``floorGrant``).
    private var sharedMemoryInUse = 0
    private var starvedStreams = StarvedStreamQueue()
    /// Receive memory every stream is entitled to whatever the others hold: a quarter of the session memory
    /// divided among the most streams there can be (4 KiB with the defaults). Idle streams whose windows grew keep
    /// their credit (it cannot be taken back), so without this floor they could leave a new stream no credit at all
    /// until they close.
    private let floorGrant: Int
    /// The pool windows beyond the floor come from: the session memory minus every possible stream's floor.
    private let sharedMemoryLimit: Int
    private var goingAway = false
    /// The largest DATA payload the peer accepts.
    public var peerMaximumDataPayload: Int

    public init(role: Role, configuration: MuxConfiguration, peerMaximumDataPayload: Int) {
        self.role = role
        self.configuration = configuration
        self.nextLocalStreamID = role == .client ? 1 : 2
        self.peerMaximumDataPayload = peerMaximumDataPayload
        let streams = max(1, configuration.maximumStreams)
        self.floorGrant = min(configuration.initialStreamWindow, max(1, configuration.sessionMemoryLimit / (4 * streams)))
        self.sharedMemoryLimit = max(0, configuration.sessionMemoryLimit - self.floorGrant * streams)
    }

    /// Streams currently in the table.
    public var streamCount: Int { self.streams.count }
    /// Receive memory committed across all streams (granted credit plus unconsumed bytes).
    public var committedMemory: Int { self.committedReceiveMemory }

    /// Whether `id` is a live stream.
    public func contains(_ id: StreamID) -> Bool { self.streams[id] != nil }

    // MARK: Local events

    /// Opens a new stream to `target`; returns its id and the OPEN frame to send.
    public mutating func openStream(to target: TargetAddress) throws(MuxError) -> (StreamID, Frame) {
        guard !self.goingAway else { throw .goingAway }
        guard self.streams.count < self.configuration.maximumStreams else {
            throw .tooManyStreams(self.configuration.maximumStreams)
        }
        let id = self.nextLocalStreamID
        guard id < StreamID.max - 1 else { throw .streamIDsExhausted }
        self.nextLocalStreamID += 2
        let grant = self.initialGrant()
        self.store(id, StreamState(
            phase: .opening,
            sendCredit: 0,
            windowTarget: self.configuration.initialStreamWindow,
            peerCredit: grant
        ))
        if grant < self.configuration.initialStreamWindow { self.starvedStreams.append(id) }
        return (id, .open(streamID: id, initialWindow: UInt32(grant), target: target))
    }

    /// The target of a peer-opened stream is connected: the OPEN_OK to send.
    public mutating func acceptSucceeded(_ id: StreamID) -> Frame? {
        guard var stream = self.streams[id], stream.phase == .accepting else { return nil }
        let grant = self.initialGrant()
        stream.phase = .open
        stream.peerCredit = grant
        self.store(id, stream)
        if grant < self.configuration.initialStreamWindow { self.starvedStreams.append(id) }
        return .openOK(streamID: id, initialWindow: UInt32(grant))
    }

    /// The target of a peer-opened stream could not be reached: the OPEN_FAIL to send.
    public mutating func acceptFailed(_ id: StreamID, reason: OpenFailReason, message: String) -> Frame? {
        guard let stream = self.streams[id], stream.phase == .accepting else { return nil }
        self.remove(id)
        return .openFail(streamID: id, reason: reason, message: message)
    }

    /// How many bytes of `id` may be sent now in one DATA frame (0 when out of credit or finished).
    public func sendableBytes(_ id: StreamID) -> Int {
        guard let stream = self.streams[id], stream.phase == .open, !stream.localFinished else { return 0 }
        return max(0, min(stream.sendCredit, self.peerMaximumDataPayload, self.configuration.maximumDataPayload))
    }

    /// Takes credit for a DATA frame and returns the frame. Credit counts original bytes: for a compressed payload
    /// pass the size before compression as `originalBytes` (the receiver buffers what it inflates to).
    public mutating func sendData(
        _ id: StreamID,
        payload: ByteBuffer,
        flags: DataFlags = [],
        originalBytes: Int? = nil
    ) -> Frame {
        self.streams[id]!.sendCredit -= originalBytes ?? payload.readableBytes
        precondition(self.streams[id]!.sendCredit >= 0, "sent past the stream's credit")
        return .data(streamID: id, flags: flags, payload: payload)
    }

    /// The local side finished sending: the FIN to send, and whether the stream is now complete and gone.
    public mutating func localFinished(_ id: StreamID) -> (frame: Frame, streamComplete: Bool)? {
        guard var stream = self.streams[id], !stream.localFinished, stream.phase == .open else { return nil }
        stream.localFinished = true
        self.streams[id] = stream
        let complete = stream.isComplete
        if complete { self.remove(id) }
        return (.fin(streamID: id), complete)
    }

    /// The local side aborted: the RST to send (nil if the stream is already gone).
    public mutating func localReset(_ id: StreamID, code: ResetCode, message: String) -> Frame? {
        guard self.streams[id] != nil else { return nil }
        self.remove(id)
        return .rst(streamID: id, code: code, message: message)
    }

    /// The local side consumed `bytes` of delivered data. Returns WINDOW frames to send (for this stream, and
    /// for starved streams that released memory lets through) and whether this stream is now complete and gone.
    public mutating func consumed(_ id: StreamID, bytes: Int) -> (frames: [Frame], streamComplete: Bool) {
        var frames: [Frame] = []
        var complete = false
        if var stream = self.streams[id] {
            stream.unconsumed -= bytes
            stream.consumedSinceUpdate += bytes
            self.store(id, stream)
            if stream.isComplete {
                self.remove(id)
                complete = true
            } else {
                // Streams starved of credit get the released memory first (a starved consumer among them is
                // topped up as it consumes, not only at half its window, which it may never reach); then this
                // stream's own update at half consumption.
                frames += self.feedStarvedStreams(including: id)
                if !frames.contains(where: { $0.streamID == id }), !self.starvedStreams.contains(id),
                    stream.consumedSinceUpdate >= stream.windowTarget / 2, let frame = self.grantCredit(id)
                {
                    frames.append(frame)
                }
                return (frames, false)
            }
        }
        frames += self.feedStarvedStreams()
        return (frames, complete)
    }

    /// Stops accepting peer-opened streams (after GOAWAY).
    public mutating func beginGoingAway() {
        self.goingAway = true
    }

    /// Whether ``beginGoingAway()`` was called: the session takes no new streams.
    public var isGoingAway: Bool { self.goingAway }

    // MARK: Received frames

    /// Handles one received stream frame (OPEN … RST).
    public mutating func receive(_ frame: Frame) -> MuxInboundAction {
        let id = frame.streamID
        if case .open(_, let window, let target) = frame {
            return self.receiveOpen(id, window: window, target: target)
        }
        guard var stream = self.streams[id] else {
            return self.unknownStream(frame)
        }
        switch frame {
        case .openOK(_, let window):
            guard stream.phase == .opening else {
                return self.resetStream(id, .protocolError, "OPEN_OK for a stream that is not opening")
            }
            stream.phase = .open
            stream.sendCredit = Int(window)
            self.streams[id] = stream
            return .opened(id)

        case .openFail(_, let reason, let message):
            guard stream.phase == .opening else {
                return self.resetStream(id, .protocolError, "OPEN_FAIL for a stream that is not opening")
            }
            self.remove(id)
            return .openFailed(id, reason, message)

        case .data(_, let flags, let payload):
            guard stream.phase == .open, !stream.remoteFinished else {
                return self.resetStream(id, .protocolError, "DATA on a stream that is not open for receiving")
            }
            if flags.contains(.compressed) {
                // Credit is charged on the inflated size: see `receivedInflated(_:bytes:)`.
                return .deliver(id, flags, payload)
            }
            if let violation = self.chargeReceived(id, bytes: payload.readableBytes) { return violation }
            return .deliver(id, flags, payload)

        case .window(_, let increment):
            let newCredit = stream.sendCredit + Int(increment)
            guard newCredit <= Int(Int32.max) else {
                return self.resetStream(id, .flowControlError, "window update overflows the credit")
            }
            stream.sendCredit = newCredit
            self.streams[id] = stream
            return .creditAvailable(id)

        case .fin:
            guard stream.phase == .open, !stream.remoteFinished else {
                return self.resetStream(id, .protocolError, "FIN on a stream that is not open for receiving")
            }
            stream.remoteFinished = true
            // No more data will come: the unused credit is memory the session gets back.
            stream.peerCredit = 0
            self.store(id, stream)
            let complete = stream.isComplete
            if complete { self.remove(id) }
            return .remoteFinished(id, streamComplete: complete)

        case .rst(_, let code, let message):
            self.remove(id)
            return .reset(id, code, message)

        default:
            return .sessionError(.protocolError, "\(frame.type) is not a stream frame")
        }
    }

    /// Charges the inflated size of a compressed DATA payload against the stream's credit; returns the RST to
    /// send when it exceeds the credit (nil when within it, or when the stream is gone).
    public mutating func receivedInflated(_ id: StreamID, bytes: Int) -> MuxInboundAction? {
        guard self.streams[id] != nil else { return nil }
        return self.chargeReceived(id, bytes: bytes)
    }

    // MARK: Internals

    private mutating func chargeReceived(_ id: StreamID, bytes: Int) -> MuxInboundAction? {
        guard var stream = self.streams[id] else { return nil }
        guard bytes <= stream.peerCredit else {
            return self.resetStream(id, .flowControlError, "peer sent \(bytes) bytes with \(stream.peerCredit) bytes of credit")
        }
        stream.peerCredit -= bytes
        stream.unconsumed += bytes
        self.streams[id] = stream
        return nil
    }

    private mutating func receiveOpen(_ id: StreamID, window: UInt32, target: TargetAddress) -> MuxInboundAction {
        let peerOpensOdd = self.role == .server
        guard (id % 2 == 1) == peerOpensOdd else {
            return .sessionError(.protocolError, "peer opened stream \(id), which is in this side's id space")
        }
        guard id > self.highestPeerStreamID else {
            return .sessionError(.protocolError, "peer reused or lowered stream id \(id)")
        }
        self.highestPeerStreamID = id
        if self.goingAway {
            return .reply(.openFail(streamID: id, reason: .goingAway, message: "shutting down"), closeStream: nil,
                          reason: "refused stream \(id) to \(target): shutting down")
        }
        guard self.streams.count < self.configuration.maximumStreams else {
            let message = "the session already has \(self.configuration.maximumStreams) streams"
            return .reply(.openFail(streamID: id, reason: .tooManyStreams, message: message), closeStream: nil,
                          reason: "refused stream \(id) to \(target): \(message)")
        }
        guard Int(window) <= Int(Int32.max) else {
            return .sessionError(.protocolError, "initial window \(window) is larger than 2^31-1")
        }
        self.streams[id] = StreamState(
            phase: .accepting,
            sendCredit: Int(window),
            windowTarget: self.configuration.initialStreamWindow,
            peerCredit: 0
        )
        return .openRequested(id, target)
    }

    private func isLocalID(_ id: StreamID) -> Bool {
        (id % 2 == 1) == (self.role == .client)
    }

    /// A frame for a stream not in the table: in flight after the stream ended (ignored), or for a stream that
    /// never existed (answered with RST).
    private func unknownStream(_ frame: Frame) -> MuxInboundAction {
        let id = frame.streamID
        let existed = self.isLocalID(id) ? id < self.nextLocalStreamID : id <= self.highestPeerStreamID
        if existed {
            return .ignore(reason: "\(frame.type) for stream \(id), which has ended")
        }
        if case .rst = frame {
            return .ignore(reason: "RST for stream \(id), which never existed")
        }
        return .reply(
            .rst(streamID: id, code: .unknownStream, message: "stream \(id) does not exist"),
            closeStream: nil,
            reason: "\(frame.type) for stream \(id), which does not exist"
        )
    }

    private mutating func resetStream(_ id: StreamID, _ code: ResetCode, _ message: String) -> MuxInboundAction {
        self.remove(id)
        return .reply(.rst(streamID: id, code: code, message: message), closeStream: id, reason: message)
    }

    private mutating func remove(_ id: StreamID) {
        guard let stream = self.streams.removeValue(forKey: id) else { return }
        self.account(from: stream.committedMemory, to: 0)
        self.starvedStreams.remove(id)
    }

    /// Stores `stream` and accounts for the change in the memory it holds.
    private mutating func store(_ id: StreamID, _ stream: StreamState) {
        self.account(from: self.streams[id]?.committedMemory ?? 0, to: stream.committedMemory)
        self.streams[id] = stream
    }

    private mutating func account(from old: Int, to new: Int) {
        self.committedReceiveMemory += new - old
        self.sharedMemoryInUse += max(0, new - self.floorGrant) - max(0, old - self.floorGrant)
    }

    private var sharedMemoryAvailable: Int {
        max(0, self.sharedMemoryLimit - self.sharedMemoryInUse)
    }

    /// What a stream holding `committed` bytes may still be granted: up to its floor, plus the shared pool.
    private func grantable(committed: Int) -> Int {
        max(0, self.floorGrant - committed) + self.sharedMemoryAvailable
    }

    private func initialGrant() -> Int {
        min(self.configuration.initialStreamWindow, self.grantable(committed: 0))
    }

    /// Returns credit to the peer for `id`, growing the window when its reader keeps up; nil when nothing can be
    /// granted (memory exhausted: the stream is then starved until memory is released).
    private mutating func grantCredit(_ id: StreamID) -> Frame? {
        guard var stream = self.streams[id], stream.phase == .open, !stream.remoteFinished else { return nil }
        if stream.unconsumed == 0, stream.peerCredit <= stream.windowTarget / 2,
            stream.windowTarget < self.configuration.maximumStreamWindow, self.starvedStreams.isEmpty
        {
            let grown = min(stream.windowTarget * 2, self.configuration.maximumStreamWindow)
            // Growth may use at most half the shared pool, keeping room for other streams' windows.
            if self.sharedMemoryInUse + (grown - stream.windowTarget) <= self.sharedMemoryLimit / 2 {
                stream.windowTarget = grown
            }
        }
        let wanted = stream.windowTarget - stream.committedMemory
        let increment = min(wanted, self.grantable(committed: stream.committedMemory))
        guard increment > 0 else {
            self.store(id, stream)
            if wanted > 0 { self.starvedStreams.append(id) }
            return nil
        }
        stream.peerCredit += increment
        stream.consumedSinceUpdate = 0
        self.store(id, stream)
        if increment == wanted {
            self.starvedStreams.remove(id)
        } else {
            self.starvedStreams.append(id)
        }
        return .window(streamID: id, increment: UInt32(increment))
    }

    /// Grants credit to starved streams while memory allows; `consumer`, when starved, is served even if the
    /// shared pool is empty (its own floor may have room again).
    private mutating func feedStarvedStreams(including consumer: StreamID? = nil) -> [Frame] {
        guard !self.starvedStreams.isEmpty else { return [] }
        let consumerStarved = consumer.map { self.starvedStreams.contains($0) } ?? false
        guard self.sharedMemoryAvailable > 0 || consumerStarved else { return [] }
        var frames: [Frame] = []
        var consumerServed = false
        // In order while the shared pool lasts; each stream at most once (one that is only partly served goes to
        // the back). The work is bounded by the grants made, not by how many streams wait.
        var waiting = self.starvedStreams.count
        while waiting > 0, self.sharedMemoryAvailable > 0, let id = self.starvedStreams.popFirst() {
            waiting -= 1
            if id == consumer { consumerServed = true }
            if let frame = self.grantCredit(id) { frames.append(frame) }
        }
        // The consumer may be served from its own floor when the pool is empty (only the loop above takes a stream
        // out of the queue, so one it did not reach is still waiting).
        if let consumer, consumerStarved, !consumerServed {
            self.starvedStreams.remove(consumer)
            if let frame = self.grantCredit(consumer) { frames.append(frame) }
        }
        return frames
    }
}

/// Why a stream could not be opened locally.
public enum MuxError: Error, Hashable, Sendable, CustomStringConvertible {
    case goingAway
    case tooManyStreams(Int)
    case streamIDsExhausted

    public var description: String {
        switch self {
        case .goingAway: "the session is shutting down"
        case .tooManyStreams(let limit): "the session already has \(limit) streams open"
        case .streamIDsExhausted: "the session has used up its stream ids"
        }
    }
}
