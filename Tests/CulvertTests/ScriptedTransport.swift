import CulvertCore
import CulvertTransport
import NIOCore
import NIOEmbedded

/// A transport connection driven by the test: it records what the session sends (as decoded frames) and injects
/// raw bytes as if they came from the peer. Runs on an `EmbeddedEventLoop`, so no timing is involved.
final class ScriptedTransport: TransportConnection, @unchecked Sendable {
    let loop = EmbeddedEventLoop()
    var eventLoop: any EventLoop { self.loop }
    let kind = TransportKind.websocket
    let peerDescription = "scripted peer"
    var isWritable = true
    private(set) var closed = false
    private var delegate: (any TransportConnectionDelegate)?
    private var decoder = FrameDecoder(maximumPayloadLength: 1 << 24)
    private var received = ByteBuffer()
    /// Frames the session sent, in order.
    private(set) var sentFrames: [Frame] = []

    /// Frames "the peer" sent before the session started this transport: delivered inside `start(delegate:)`, as a
    /// real transport delivers what it had already read.
    var preloaded: [Frame] = []

    func start(delegate: any TransportConnectionDelegate) {
        self.delegate = delegate
        let waiting = self.preloaded
        self.preloaded = []
        for frame in waiting { delegate.transport(self, didReceive: FrameEncoder().encode(frame)) }
        if !waiting.isEmpty { delegate.transportDidReadComplete(self) }
    }

    func send(_ message: ByteBuffer) {
        var message = message
        self.received.writeBuffer(&message)
        while let frame = try? self.decoder.decode(buffer: &self.received) { self.sentFrames.append(frame) }
    }

    func close() {
        guard !self.closed else { return }
        self.closed = true
        self.delegate?.transportDidClose(self, error: nil)
    }

    /// Delivers raw bytes from the "peer", then runs pending loop tasks.
    func inject(_ bytes: ByteBuffer) {
        self.delegate?.transport(self, didReceive: bytes)
        self.delegate?.transportDidReadComplete(self)
        self.loop.run()
    }

    func inject(_ frame: Frame) {
        self.inject(FrameEncoder().encode(frame))
    }

    /// Removes and returns what the session sent so far.
    func takeSent() -> [Frame] {
        self.loop.run()
        defer { self.sentFrames = [] }
        return self.sentFrames
    }
}
