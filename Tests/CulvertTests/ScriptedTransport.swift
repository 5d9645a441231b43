import CulvertCore
import CulvertTransport
import NIOCore
import NIOEmbedded

/// A transport connection driven by the test: it records what the session sends (as decoded frames) and injects
/// raw bytes as if they came from the peer. Runs on an `EmbeddedEventLoop`, so no timing is involved. Once the test's
/// handshake is done (``sealAsPeer(_:peerIsClient:)``), it seals what it injects and opens what the session sealed,
/// as the peer's session would.
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
    /// Frames the session sent, in order (those it sealed, opened).
    private(set) var sentFrames: [Frame] = []
    /// The peer's side of end-to-end protection, once the test's handshake gave it keys.
    private var peerCipher: SessionCipher?
    /// SEALED frames the session sent before the test had the keys to open them.
    private var unopened: [ByteBuffer] = []

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
        while let frame = try? self.decoder.decode(buffer: &self.received) {
            if case .sealed(let payload) = frame {
                self.unopened.append(payload)
                self.openWaitingFrames()
            } else {
                self.sentFrames.append(frame)
            }
        }
    }

    /// From now on, seals injected frames and opens the session's with the keys of `outcome` (the test's own
    /// handshake, as the peer: a client when `peerIsClient`).
    func sealAsPeer(_ outcome: HandshakeStateMachine.Outcome, peerIsClient: Bool) {
        self.peerCipher = outcome.sealingKeys.map { SessionCipher(keys: $0, isClient: peerIsClient) }
        self.openWaitingFrames()
    }

    private func openWaitingFrames() {
        guard self.peerCipher != nil else { return }
        for payload in self.unopened {
            guard var plaintext = try? self.peerCipher!.open(payload) else {
                self.sentFrames.append(.sealed(payload: payload))
                continue
            }
            var inner = FrameDecoder(maximumPayloadLength: 1 << 24)
            while let frame = try? inner.decode(buffer: &plaintext) { self.sentFrames.append(frame) }
        }
        self.unopened = []
    }

    func close() {
        guard !self.closed else { return }
        self.closed = true
        self.delegate?.transportDidClose(self, error: nil)
    }

    /// Delivers bytes from the "peer" (sealed, once it has keys), then runs pending loop tasks.
    func inject(_ bytes: ByteBuffer) {
        guard self.peerCipher != nil else {
            self.injectUnsealed(bytes)
            return
        }
        var sealed = ByteBuffer()
        self.peerCipher!.seal(bytes, into: &sealed)
        self.injectUnsealed(sealed)
    }

    /// Delivers raw bytes as they are, as a hop on the path could, then runs pending loop tasks.
    func injectUnsealed(_ bytes: ByteBuffer) {
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
