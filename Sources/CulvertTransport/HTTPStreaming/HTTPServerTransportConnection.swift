import NIOCore
import NIOHTTP1

/// The server end of one chunked or polling transport connection: many HTTP requests, on any TCP connections,
/// that name it by its id. Downstream bytes go out on the current GET (streamed as chunks, or as one polling
/// response), upstream bytes arrive in POST bodies; offsets and acknowledgements make every byte arrive once.
///
/// What happens next is decided by the pure ``HTTPServerConnectionStateMachine``; this class carries it out: it
/// writes the responses (records in the shape each request asked for), keeps the timers (with the loop's clock, so
/// that tests on `EmbeddedEventLoop` move time), admits requests by their signatures and tells the session.
///
/// Confined to ``eventLoop``: request handlers on other loops reach it through its ``HTTPServerConnectionHandle``.
final class HTTPServerTransportConnection: TransportConnection {
    typealias DownMode = HTTPServerConnectionStateMachine.DownMode

    let id: String
    let kind: TransportKind
    let eventLoop: any EventLoop
    let peerDescription: String
    private let settings: HTTPTransportServerSettings
    private var machine: HTTPServerConnectionStateMachine
    /// The TCP connection of the GET held now (``HTTPServerConnectionStateMachine/response``), and its timer.
    private var responseChannel: (id: UInt64, channel: any Channel, timer: Scheduled<Void>?)?
    private let relay = TransportDelegateRelay()
    private var closed: Bool { self.relay.isClosed }
    /// The next look at whether the connection is idle, every quarter of the idle timeout (at least every 10 ms).
    private var idleTask: Scheduled<Void>?
    private let idleCheckInterval: TimeAmount
    private var wasWritable = true
    /// Set once the session is authenticated (on eventLoop).
    var isAuthenticated: Bool { self.machine.isAuthenticated }
    /// The TCP connections carrying uploads now, closed with this connection so that none outlives it.
    private var uploadChannels: [ObjectIdentifier: any Channel] = [:]
    /// While the machine lingers after a close, the id stays known until this ends.
    private var lingerTask: Scheduled<Void>?
    /// The admission of requests, shared with the handle that request handlers on any loop hold.
    let admission = HTTPServerConnectionHandle.Admission()
    /// Called once, on close, so the registry forgets the id.
    var onClose: (() -> Void)?

    let peerAddress: SocketAddress?

    init(
        id: String, kind: TransportKind, eventLoop: any EventLoop, peerDescription: String, peerAddress: SocketAddress?,
        settings: HTTPTransportServerSettings
    ) {
        self.peerAddress = peerAddress
        self.id = id
        self.kind = kind
        self.eventLoop = eventLoop
        self.peerDescription = peerDescription
        self.settings = settings
        self.machine = HTTPServerConnectionStateMachine(settings: settings, now: eventLoop.now)
        self.idleCheckInterval = .nanoseconds(max(settings.idleTimeout.nanoseconds / 4, 10_000_000))
        self.scheduleIdleCheck()
    }

    var isWritable: Bool { self.machine.isWritable }

    func start(delegate: any TransportConnectionDelegate) {
        self.eventLoop.preconditionInEventLoop()
        self.relay.start(delegate, for: self)
    }

    func send(_ message: ByteBuffer) {
        guard !self.closed else { return }
        self.perform(self.machine.send(message))
        self.updateWritability()
    }

    func close() {
        self.closeNow(error: nil, sendCloseRecord: true)
    }

    /// From now on every request must be signed; the unsigned GET still open (it carried the WELCOME) is ended, so
    /// the client's next one is signed.
    func sessionAuthenticated(key: [UInt8]) {
        self.eventLoop.preconditionInEventLoop()
        self.admission.requireSignatures(by: HTTPRequestSigner(sessionKey: key, connectionID: self.id))
        self.perform(self.machine.sessionAuthenticated())
    }

    // MARK: Requests (called on eventLoop by HTTPTransportRequestHandler)

    /// A GET for downstream bytes arrived on `channel`; `acknowledged` is what the client has received.
    func downRequest(
        channel: any Channel, version: HTTPVersion, mode: DownMode, acknowledged: UInt64, signed: Bool, shape: HTTPBodyShape,
        byteLimit: Int? = nil
    ) {
        let answer = self.machine.downRequest(
            mode: mode, http10: version.major == 1 && version.minor == 0, acknowledged: acknowledged, signed: signed, shape: shape,
            byteLimit: byteLimit, now: self.eventLoop.now
        )
        switch answer {
        case .complete(let records, let forget):
            Self.respondEmpty(channel: channel, records: records, shape: shape)
            if forget { self.forget() }
        case .forbidden:
            HTTPTransportRequestHandler.writeError(channel: channel, version: version, status: .forbidden,
                                                   "the request is not signed with the session's key")
        case .violation(let reason):
            self.closeNow(error: TransportError.protocolViolation("\(self.kind): \(reason)"), sendCloseRecord: true)
        case .hold(let response, let replacing, let acknowledging):
            // Nothing calls out (to the session) until the new response is held here as it is in the machine: what
            // the session sends is then written on it, not on a channel the machine no longer knows.
            self.perform(replacing)
            self.hold(response, on: channel, version: version, acknowledging: acknowledging)
            self.perform(self.machine.pump())
            self.updateWritability()
        }
    }

    /// Makes `response` the current one on `channel`: a streaming one gets its head and an ACK of the upstream bytes so
    /// far (which lets the client see at once that the stream gets through); each ends at its timer.
    private func hold(_ response: HTTPServerConnectionStateMachine.Response, on channel: any Channel, version: HTTPVersion, acknowledging: UInt64) {
        let timeout = response.mode == .stream ? self.settings.streamResponseMaxAge : self.settings.pollHoldTime
        let timer = self.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
            self.perform(self.machine.responseTimerFired(response.id))
        }
        self.responseChannel = (response.id, channel, timer)
        guard response.mode == .stream else { return }
        var headers = Self.responseHeaders(shape: response.shape)
        if response.closeDelimited {
            headers.add(name: "Connection", value: "close")
        } else {
            headers.add(name: "Transfer-Encoding", value: "chunked")
        }
        channel.write(HTTPServerResponsePart.head(HTTPResponseHead(version: version, status: .ok, headers: headers)), promise: nil)
        let ack = response.shape.wire(HTTPTransportRecord.acknowledge(acknowledging).encoded(), allocator: channel.allocator)
        channel.write(HTTPServerResponsePart.body(.byteBuffer(ack)), promise: nil)
        channel.flush()
    }

    /// The TCP connection of a GET closed: stop writing to it.
    func downChannelClosed(_ channel: any Channel) {
        guard let held = self.responseChannel, held.channel === channel else { return }
        held.timer?.cancel()
        self.responseChannel = nil
        _ = self.machine.responseConnectionClosed(held.id)
    }

    func uploadStarted(channel: any Channel) {
        if self.machine.uploadStarted(now: self.eventLoop.now) {
            self.uploadChannels[ObjectIdentifier(channel)] = channel
        } else {
            channel.close(promise: nil)
        }
    }

    /// Records from a POST body; `signed` says how the POST was admitted.
    func uploadRecords(_ records: [HTTPTransportRecord], signed: Bool) {
        var delivered = false
        let now = self.eventLoop.now
        reading: for record in records {
            switch self.machine.uploadRecord(record, signed: signed, now: now) {
            case .none:
                self.updateWritability()
            case .deliver(let bytes):
                delivered = true
                self.relay.deliver(bytes, from: self)
            case .stop:
                break reading
            case .violation(let reason):
                self.closeNow(error: TransportError.protocolViolation("\(self.kind): \(reason)"), sendCloseRecord: true)
                return
            case .close:
                self.closeNow(error: nil, sendCloseRecord: false)
                return
            }
        }
        guard delivered else { return }
        self.relay.readComplete(from: self)
        // The ACK goes out a moment later, on a fresh stack, gathering whatever else this read delivers.
        guard self.machine.scheduleAcknowledgement() else { return }
        self.eventLoop.assumeIsolated().execute { [self] in
            guard let offset = self.machine.acknowledgementToWrite(), let held = self.responseChannel,
                let response = self.machine.response, response.id == held.id
            else { return }
            let ack = response.shape.wire(HTTPTransportRecord.acknowledge(offset).encoded(), allocator: held.channel.allocator)
            held.channel.writeAndFlush(HTTPServerResponsePart.body(.byteBuffer(ack)), promise: nil)
        }
    }

    /// A POST body ended (or its TCP connection closed); returns the upstream acknowledgement for its response.
    func uploadFinished(channel: any Channel) -> UInt64 {
        self.uploadChannels.removeValue(forKey: ObjectIdentifier(channel))
        return self.machine.uploadFinished(now: self.eventLoop.now)
    }

    // MARK: Downstream

    /// Carries out what the machine decided about the current response.
    private func perform(_ action: HTTPServerConnectionStateMachine.DownAction) {
        switch action {
        case .none:
            break
        case .writeStream:
            self.writeStream()
        case .finish(let response, let ending):
            guard let held = self.responseChannel, held.id == response.id else { return }
            held.timer?.cancel()
            self.responseChannel = nil
            Self.end(held.channel, as: ending, shape: response.shape)
        }
    }

    /// Writes what is unsent into the streaming response, ending it at its limits.
    private func writeStream() {
        guard let held = self.responseChannel, let response = self.machine.response, response.id == held.id else { return }
        let channel = held.channel
        let allocator = channel.allocator
        var full = false
        for piece in self.machine.unsentPieces() {
            var header = allocator.buffer(capacity: HTTPTransportRecord.dataHeaderLength)
            HTTPTransportRecord.writeDataHeader(offset: piece.offset, length: piece.bytes.readableBytes, to: &header)
            let wireHeader = response.shape.wire(header, allocator: allocator)
            let wirePayload = response.shape.wire(piece.bytes, allocator: allocator)
            let length = wireHeader.readableBytes + wirePayload.readableBytes
            // Small answers: a piece that would take the body past the client's limit goes in the next one.
            let written = self.machine.responseWireBytes
            if written > 0 && written + length > response.wireLimit {
                full = true
                break
            }
            channel.write(HTTPServerResponsePart.body(.byteBuffer(wireHeader)), promise: nil)
            channel.write(HTTPServerResponsePart.body(.byteBuffer(wirePayload)), promise: nil)
            self.machine.wroteToResponse(
                wireBytes: length, payloadBytes: piece.bytes.readableBytes, endingAt: piece.offset + UInt64(piece.bytes.readableBytes)
            )
        }
        channel.flush()
        self.perform(self.machine.streamWriteFinished(full: full))
    }

    /// Ends a response on `channel` as `ending` says.
    private static func end(_ channel: any Channel, as ending: HTTPServerConnectionStateMachine.Ending, shape: HTTPBodyShape) {
        switch ending {
        case .complete(let records):
            Self.respondEmpty(channel: channel, records: records, shape: shape)
        case .endStream(let closeRecord, let closeConnection):
            if closeRecord {
                let close = shape.wire(HTTPTransportRecord.close.encoded(), allocator: channel.allocator)
                channel.write(HTTPServerResponsePart.body(.byteBuffer(close)), promise: nil)
            }
            let ended = channel.writeAndFlush(HTTPServerResponsePart.end(nil))
            if closeConnection { ended.whenComplete { _ in channel.close(promise: nil) } }
        }
    }

    private func updateWritability() {
        let writable = self.isWritable
        guard writable != self.wasWritable else { return }
        self.wasWritable = writable
        self.relay.writabilityChanged(of: self)
    }

    // MARK: Closing

    private func scheduleIdleCheck() {
        self.idleTask = self.eventLoop.assumeIsolated().scheduleTask(in: self.idleCheckInterval) { [self] in
            self.checkIdle()
            if !self.closed { self.scheduleIdleCheck() }
        }
    }

    private func checkIdle() {
        guard self.machine.isIdle(now: self.eventLoop.now) else { return }
        self.closeNow(error: TransportError.timedOut(self.kind, phase: "next request", seconds: self.settings.idleTimeout.seconds),
                      sendCloseRecord: false)
    }

    private func closeNow(error: (any Error)?, sendCloseRecord: Bool) {
        guard let closing = self.machine.close(sendCloseRecord: sendCloseRecord) else { return }
        let delegateWaits = self.relay.markClosed(error: error)
        self.idleTask?.cancel()
        self.idleTask = nil
        if let held = self.responseChannel {
            held.timer?.cancel()
            self.responseChannel = nil
            if let response = closing.response, response.id == held.id, let ending = closing.ending {
                Self.end(held.channel, as: ending, shape: response.shape)
            } else {
                held.channel.close(promise: nil)
            }
        }
        for channel in self.uploadChannels.values { channel.close(promise: nil) }
        self.uploadChannels = [:]
        if closing.lingers {
            // What the session sent last (a GOAWAY that refuses a resumption, say) has not been fetched: keep it,
            // and the id, for the client's next GET.
            self.lingerTask = self.eventLoop.assumeIsolated().scheduleTask(in: self.settings.pollHoldTime) { [self] in
                self.machine.forget()
                self.forget()
            }
        } else {
            self.forget()
        }
        if delegateWaits {
            // Reported from a fresh stack: close() may be called from inside a delegate callback.
            self.eventLoop.assumeIsolated().execute { [self] in self.relay.reportClose(for: self) }
        }
    }

    /// Lets the registry forget the id, once the machine let go of what the connection kept.
    private func forget() {
        self.lingerTask?.cancel()
        self.lingerTask = nil
        self.onClose?()
        self.onClose = nil
    }

    // MARK: Responses

    /// The headers of every answer the server gives a chunked or polling request, its body in `shape`.
    static func responseHeaders(shape: HTTPBodyShape = .binary) -> HTTPHeaders {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: shape.contentType)
        headers.add(name: "Cache-Control", value: "no-store")
        // Asks nginx (and proxies that honour it) not to buffer the response.
        headers.add(name: "X-Accel-Buffering", value: "no")
        headers.add(name: "Server", value: "culvert/\(CulvertVersion.string)")
        return headers
    }

    /// Answers a request with a complete body of `records` (Content-Length, so HTTP/1.0 proxies pass it too).
    static func respondEmpty(channel: any Channel, records: [HTTPTransportRecord], shape: HTTPBodyShape) {
        var body = channel.allocator.buffer(capacity: 64)
        for record in records { record.write(to: &body) }
        if body.readableBytes > 0 { body = shape.wire(body, allocator: channel.allocator) }
        var headers = Self.responseHeaders(shape: shape)
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        channel.write(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers)), promise: nil)
        if body.readableBytes > 0 { channel.write(HTTPServerResponsePart.body(.byteBuffer(body)), promise: nil) }
        channel.writeAndFlush(HTTPServerResponsePart.end(nil), promise: nil)
    }
}
