public import NIOCore

/// The frames queued for a session's next transport message. Small frames are encoded into one buffer; a DATA
/// payload of ``gatheredPayloadMinimum`` bytes or more stays where its socket read put it and is sent after its
/// header (a gathered write), so the batch copies no large payload. Where the reliable frames lie is kept until the
/// batch is sent, when they go to the replay buffer as slices: a slice taken earlier would make every later write
/// into the buffer copy it whole. The buffers are reused, so that interactive traffic sends without allocating.
public struct OutboundBatch {
    /// DATA payloads this long or longer are written after their header as they are; shorter ones are copied into
    /// the batch, which costs less than another part of the message.
    public static let gatheredPayloadMinimum = 2048
    /// A batch buffer after a small batch (interactive traffic): grows if it must.
    static let smallCapacity = 2048
    /// After a large one (bulk): room for two full DATA frames, below malloc's mmap threshold so that it is reused
    /// cheaply.
    static let largeCapacity = 66 * 1024

    private let encoder = FrameEncoder()
    private var buffer: ByteBuffer
    /// Where each reliable frame queued lies in `buffer`, and its payload when that was gathered.
    private var reliableFrames: [(start: Int, length: Int, payload: ByteBuffer?)] = []
    /// The gathered payloads: where each goes (the index in `buffer` after its header) and the payload.
    private var gatheredPayloads: [(index: Int, payload: ByteBuffer)] = []
    private var gatheredBytes = 0
    /// The parts of the message being sent (kept for its storage).
    private var parts: [ByteBuffer] = []
    /// The buffer sent before the current one was filled: the next batch goes into it once nothing holds it.
    private var previousBuffer: ByteBuffer?

    public init() {
        self.buffer = ByteBufferAllocator().buffer(capacity: Self.smallCapacity)
    }

    /// Nothing is queued.
    public var isEmpty: Bool { self.buffer.readableBytes == 0 }
    /// Bytes of the message the batch would be now.
    public var byteCount: Int { self.buffer.readableBytes + self.gatheredBytes }
    /// Reliable frames were queued since they were last recorded.
    public var hasUnrecordedReliableFrames: Bool { !self.reliableFrames.isEmpty }

    /// Queues `frame` behind the others.
    public mutating func append(_ frame: Frame) {
        let start = self.buffer.writerIndex
        if case .data(let streamID, let flags, let payload) = frame, payload.readableBytes >= Self.gatheredPayloadMinimum {
            self.encoder.encodeDataHeader(streamID: streamID, flags: flags, payloadLength: payload.readableBytes, into: &self.buffer)
            self.gatheredPayloads.append((self.buffer.writerIndex, payload))
            self.gatheredBytes += payload.readableBytes
            self.reliableFrames.append((start, self.buffer.writerIndex - start, payload))
        } else {
            self.encoder.encode(frame, into: &self.buffer)
            if frame.type.isReliable {
                self.reliableFrames.append((start, self.buffer.writerIndex - start, nil))
            }
        }
    }

    /// Drops everything queued (a protocol failure sends its GOAWAY alone).
    public mutating func discard() {
        self.buffer.clear()
        self.reliableFrames.removeAll()
        self.gatheredPayloads.removeAll()
        self.gatheredBytes = 0
    }

    /// Records the reliable frames queued so far in `sequencer`'s replay buffer, in order, just before the batch is
    /// sent.
    public mutating func recordReliableFrames(in sequencer: inout ReliableSequencer) {
        for (start, length, payload) in self.reliableFrames {
            let encoded = self.buffer.getSlice(at: start, length: length)!
            if let payload {
                sequencer.recordSent(header: encoded, payload: payload)
            } else {
                sequencer.recordSent(encoded)
            }
        }
        self.reliableFrames.removeAll(keepingCapacity: true)
    }

    /// Takes what is queued as one message: its parts in order (a single buffer when nothing was gathered;
    /// otherwise headers and small frames from the batch, each gathered payload as it came), and starts the next
    /// batch empty, so that whatever sending the message sets off may queue frames again. The array is the batch's
    /// own, reused at the next call: let go of it before then. Reliable frames not recorded by now are not recorded
    /// (there is no session to replay them).
    ///
    /// The next batch goes into the buffer sent before this one if the socket and the replay buffer (until its
    /// frames are acknowledged) have let go of it: in interactive traffic the peer's answer acknowledges a batch
    /// before the next is sent, so nothing is allocated; in bulk a new buffer is.
    public mutating func takeMessage() -> [ByteBuffer] {
        // The last message's parts go first, so that they hold none of the buffers any more.
        self.parts.removeAll(keepingCapacity: true)
        var cursor = self.buffer.readerIndex
        for (index, payload) in self.gatheredPayloads {
            self.parts.append(self.buffer.getSlice(at: cursor, length: index - cursor)!)
            self.parts.append(payload)
            cursor = index
        }
        if cursor < self.buffer.writerIndex || self.parts.isEmpty {
            self.parts.append(self.buffer.getSlice(at: cursor, length: self.buffer.writerIndex - cursor)!)
        }
        self.reliableFrames.removeAll(keepingCapacity: true)
        self.gatheredPayloads.removeAll(keepingCapacity: true)
        self.gatheredBytes = 0
        // What the buffer itself held (gathered payloads were not in it) sizes the next one.
        let held = self.buffer.readableBytes
        var next = self.previousBuffer ?? ByteBuffer()
        self.previousBuffer = self.buffer
        // `clear(minimumCapacity:)` allocates only while something still holds the buffer.
        next.clear(minimumCapacity: held > Self.smallCapacity ? Self.largeCapacity : Self.smallCapacity)
        self.buffer = next
        return self.parts
    }
}
