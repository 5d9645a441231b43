public import NIOCore

/// Sequence numbers, acknowledgements and the replay buffer of a session.
///
/// Reliable frames (``FrameType/isReliable``) are numbered implicitly: the n-th reliable frame a side sends has
/// sequence number n, counting from 1 for the session's life, across transport connections. Each side tells the
/// other how many it has received with ACK; a sender keeps every reliable frame the peer has not acknowledged, so
/// that after the transport is replaced it can send them again starting at the peer's count.
public struct ReliableSequencer: Sendable {
    /// Reliable frames sent so far.
    public private(set) var sent: UInt64 = 0
    /// Reliable frames the peer has acknowledged.
    public private(set) var acknowledgedByPeer: UInt64 = 0
    /// Reliable frames received so far.
    public private(set) var received: UInt64 = 0
    /// The `received` count last sent in an ACK.
    public private(set) var lastAcknowledged: UInt64 = 0
    private var bytesReceivedSinceAck = 0

    /// A frame sent but not acknowledged: its encoded bytes, or (a DATA frame written gathered) its header and its
    /// payload as they were sent.
    private struct SentFrame {
        var encoded: ByteBuffer
        var payload: ByteBuffer?
        var byteCount: Int { self.encoded.readableBytes + (self.payload?.readableBytes ?? 0) }
    }

    /// Frames sent but not acknowledged, oldest first; frame n is at index `n - acknowledgedByPeer - 1`.
    private var replay = CircularBuffer<SentFrame>()
    /// Bytes held in the replay buffer.
    public private(set) var replayBytes = 0

    /// An ACK is sent once this many unacknowledged frames or bytes have been received (sooner on a timer).
    public var ackEveryFrames: UInt64
    public var ackEveryBytes: Int

    public init(ackEveryFrames: UInt64 = 64, ackEveryBytes: Int = 128 * 1024) {
        self.ackEveryFrames = ackEveryFrames
        self.ackEveryBytes = ackEveryBytes
    }

    /// Records a reliable frame that was just sent, in its encoded form.
    public mutating func recordSent(_ encodedFrame: ByteBuffer) {
        self.record(SentFrame(encoded: encodedFrame, payload: nil))
    }

    /// Records a reliable frame that was just sent as its encoded header followed by `payload` (a gathered write).
    public mutating func recordSent(header: ByteBuffer, payload: ByteBuffer) {
        self.record(SentFrame(encoded: header, payload: payload))
    }

    private mutating func record(_ frame: SentFrame) {
        self.sent += 1
        self.replayBytes += frame.byteCount
        self.replay.append(frame)
    }

    /// Handles the peer's ACK: frees acknowledged frames. Throws when the peer acknowledges frames never sent.
    public mutating func receiveAck(_ count: UInt64) throws(SequencerError) {
        guard count <= self.sent else { throw .ackBeyondSent(acknowledged: count, sent: self.sent) }
        while self.acknowledgedByPeer < count {
            let frame = self.replay.removeFirst()
            self.replayBytes -= frame.byteCount
            self.acknowledgedByPeer += 1
        }
    }

    /// Records a received reliable frame of `byteCount` encoded bytes.
    public mutating func recordReceived(byteCount: Int) {
        self.received += 1
        self.bytesReceivedSinceAck += byteCount
    }

    /// Whether enough has been received that an ACK should go out now rather than on the timer.
    public var ackDueNow: Bool {
        self.received - self.lastAcknowledged >= self.ackEveryFrames || self.bytesReceivedSinceAck >= self.ackEveryBytes
    }

    /// Whether anything received is not acknowledged yet.
    public var hasUnacknowledged: Bool { self.received > self.lastAcknowledged }

    /// The ACK frame to send now, recording that it was sent.
    public mutating func makeAck() -> Frame {
        self.lastAcknowledged = self.received
        self.bytesReceivedSinceAck = 0
        return .ack(received: self.received)
    }

    /// The frames to send again on a new transport connection, given that the peer has received `peerReceived`,
    /// each in its encoded form (a frame sent gathered is put together again: replay is rare, a copy then is cheap).
    public mutating func framesToReplay(peerReceived: UInt64) throws(SequencerError) -> [ByteBuffer] {
        try self.receiveAck(max(peerReceived, self.acknowledgedByPeer))
        return self.replay.map { frame in
            guard let payload = frame.payload else { return frame.encoded }
            var whole = ByteBufferAllocator().buffer(capacity: frame.byteCount)
            whole.writeImmutableBuffer(frame.encoded)
            whole.writeImmutableBuffer(payload)
            return whole
        }
    }
}

/// A peer's sequence numbers that cannot be right.
public enum SequencerError: Error, Hashable, Sendable, CustomStringConvertible {
    case ackBeyondSent(acknowledged: UInt64, sent: UInt64)

    public var description: String {
        switch self {
        case .ackBeyondSent(let acknowledged, let sent):
            "peer acknowledged \(acknowledged) frames but only \(sent) were sent"
        }
    }
}
