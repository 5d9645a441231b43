import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1

/// The server end of one chunked or polling transport connection: many HTTP requests, on any TCP connections,
/// that name it by its id. Downstream bytes go out on the current GET (streamed as chunks, or as one polling
/// response), upstream bytes arrive in POST bodies; offsets and acknowledgements make every byte arrive once.
///
/// Confined to ``eventLoop``; request handlers on other loops hop to it.
final class HTTPServerTransportConnection: TransportConnection, @unchecked Sendable {
    enum DownMode: String {
        /// One long chunked response, written as data is produced.
        case stream
        /// A held GET answered as soon as there is data (or the hold time passes).
        case poll
    }

    private struct DownResponder {
        let channel: any Channel
        let mode: DownMode
        /// The shape the request asked for (`Accept`).
        let shape: HTTPBodyShape
        /// Payload bytes this response carries at most (a streaming one then ends, and the client asks again).
        let payloadLimit: Int
        /// Bytes its body may have on the wire when the client asked for small answers (`r=`), and has.
        let wireLimit: Int
        var wireBytesWritten = 0
        /// Offset of the next byte to write on this response.
        var nextOffset: UInt64
        var bytesWritten = 0
        var timer: Scheduled<Void>?
        var headSent = false
        /// An HTTP/1.0 request (e.g. from nginx's default `proxy_http_version 1.0`): a streaming answer cannot be
        /// chunked, so its body runs to the end of the connection.
        var closeDelimited = false
        /// Admitted before the session was authenticated (unsigned): ended once it is.
        var signed: Bool
    }

    /// How a request on this connection is let in.
    enum Admission: Equatable {
        /// Unsigned: taken with the limits for strangers; once the session is authenticated such a request gets
        /// nothing that came after the handshake (it may be the client's own, sent before it had the key).
        case unsigned
        /// Signed with the session's key.
        case signed
        /// Refused: the request carries a signature that does not verify, or one used before.
        case refused(String)
    }

    /// The signer and the counters seen, once the session is authenticated.
    private struct Verifier {
        let signer: HTTPRequestSigner
        var window = RequestCounterWindow()
    }

    let id: String
    let kind: TransportKind
    let eventLoop: any EventLoop
    let peerDescription: String
    private let settings: HTTPTransportServerSettings
    private var down = OutboundByteLog()
    private var up = InboundByteCursor()
    private var responder: DownResponder?
    private let relay = TransportDelegateRelay()
    private var closed: Bool { self.relay.isClosed }
    private var lastActivity = NIODeadline.now()
    private var openUploads = 0
    private var idleTask: RepeatedTask?
    private var ackWriteScheduled = false
    private var ackWritten: UInt64 = 0
    private var wasWritable = true
    /// Set once the session is authenticated (on eventLoop).
    private(set) var isAuthenticated = false
    /// The downstream offset where the handshake ended: all an unsigned request may ever read.
    private var handshakeEnd: UInt64 = 0
    /// The TCP connections carrying uploads now, closed with this connection so that none outlives it.
    private var uploadChannels: [ObjectIdentifier: any Channel] = [:]
    /// After a close with downstream bytes the client has not fetched (a GOAWAY, say), the id stays known until
    /// this ends, so that the client's next GET still gets them and the close record.
    private var lingerTask: Scheduled<Void>?
    /// Read and written by request handlers on any loop.
    private let verifier = NIOLockedValueBox<Verifier?>(nil)
    /// Called once, on close, so the registry forgets the id.
    var onClose: (() -> Void)?

    let peerAddress: SocketAddress?
    /// Upstream POSTs being received now, counted by the request handlers (on any loop).
    let pendingUploads = NIOLockedValueBox(0)

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
        let tick = TimeAmount.nanoseconds(max(settings.idleTimeout.nanoseconds / 4, 10_000_000))
        self.idleTask = eventLoop.scheduleRepeatedTask(initialDelay: tick, delay: tick) { [self] _ in self.checkIdle() }
    }

    var isWritable: Bool { self.down.unacknowledgedBytes < self.settings.sendWindowBytes }

    func start(delegate: any TransportConnectionDelegate) {
        self.eventLoop.preconditionInEventLoop()
        self.relay.start(delegate, for: self)
    }

    func send(_ message: ByteBuffer) {
        guard !self.closed else { return }
        self.down.append(message)
        self.pumpDown()
        self.updateWritability()
    }

    func close() {
        self.closeNow(error: nil, sendCloseRecord: true)
    }

    /// From now on every request must be signed; the unsigned GET still open (it carried the WELCOME) is ended, so
    /// the client's next one is signed.
    func sessionAuthenticated(key: [UInt8]) {
        self.eventLoop.preconditionInEventLoop()
        let signer = HTTPRequestSigner(sessionKey: key, connectionID: self.id)
        self.verifier.withLockedValue { $0 = Verifier(signer: signer) }
        self.isAuthenticated = true
        self.handshakeEnd = self.down.produced
        if let responder = self.responder, !responder.signed { self.finishResponder(responder) }
    }

    /// How a request may go on: a signature must verify (with a counter not seen before) once the session is
    /// authenticated; an unsigned request goes on as a stranger's. Called by request handlers on any loop.
    func admit(method: String, endpoint: String, offset: UInt64, signature: String?) -> Admission {
        self.verifier.withLockedValue { verifier in
            guard let signature else { return .unsigned }
            guard var current = verifier else { return .unsigned }
            guard let counter = current.signer.verify(signature, method: method, endpoint: endpoint, offset: offset) else {
                return .refused("the request's signature does not verify with the session's key")
            }
            guard current.window.accept(counter) else { return .refused("the request's signature was used before") }
            verifier = current
            return .signed
        }
    }

    // MARK: Requests (called on eventLoop by HTTPTransportRequestHandler)

    /// A GET for downstream bytes arrived on `channel`; `acknowledged` is what the client has received.
    func downRequest(
        channel: any Channel, version: HTTPVersion, mode: DownMode, acknowledged: UInt64, signed: Bool, shape: HTTPBodyShape,
        byteLimit: Int? = nil
    ) {
        self.lastActivity = .now()
        guard !self.closed else {
            self.answerAfterClose(channel: channel, acknowledged: acknowledged, shape: shape)
            return
        }
        guard signed || !self.isAuthenticated else {
            self.answerUnsigned(channel: channel, version: version, from: acknowledged, shape: shape)
            return
        }
        guard self.applyAcknowledgement(acknowledged) else { return }
        // A newer request replaces an older one (the client gave up on it): answer the old one empty.
        if let old = self.responder { self.finishResponder(old) }
        let wireLimit = min(mode == .stream ? self.settings.streamResponseLimitBytes : self.settings.maximumPollResponseBytes, byteLimit ?? .max)
        var responder = DownResponder(
            channel: channel, mode: mode, shape: shape, payloadLimit: max(1, shape.recordBytes(inWireBytes: wireLimit) - 64),
            wireLimit: byteLimit ?? .max, nextOffset: self.down.acknowledged, signed: signed
        )
        switch mode {
        case .stream:
            responder.timer = self.eventLoop.scheduleTask(in: self.settings.streamResponseMaxAge) { [self] in
                if let current = self.responder, current.channel === channel { self.finishResponder(current) }
            }
            var headers = Self.responseHeaders(shape: shape)
            if version.major == 1 && version.minor == 0 {
                responder.closeDelimited = true
                headers.add(name: "Connection", value: "close")
            } else {
                headers.add(name: "Transfer-Encoding", value: "chunked")
            }
            channel.write(HTTPServerResponsePart.head(HTTPResponseHead(version: version, status: .ok, headers: headers)), promise: nil)
            responder.headSent = true
            // The ack of upstream bytes so far lets the client see at once that the stream gets through.
            let ack = shape.wire(HTTPTransportRecord.acknowledge(self.up.received).encoded(), allocator: channel.allocator)
            channel.write(HTTPServerResponsePart.body(.byteBuffer(ack)), promise: nil)
            self.ackWritten = self.up.received
            channel.flush()
        case .poll:
            responder.timer = self.eventLoop.scheduleTask(in: self.settings.pollHoldTime) { [self] in
                if let current = self.responder, current.channel === channel { self.finishResponder(current) }
            }
        }
        self.responder = responder
        self.pumpDown()
    }

    /// The TCP connection of a GET closed: stop writing to it.
    func downChannelClosed(_ channel: any Channel) {
        guard let responder = self.responder, responder.channel === channel else { return }
        responder.timer?.cancel()
        self.responder = nil
    }

    func uploadStarted(channel: any Channel) {
        self.lastActivity = .now()
        self.openUploads += 1
        if self.closed {
            channel.close(promise: nil)
        } else {
            self.uploadChannels[ObjectIdentifier(channel)] = channel
        }
    }

    /// Records from a POST body; `signed` says how the POST was admitted.
    func uploadRecords(_ records: [HTTPTransportRecord], signed: Bool) {
        self.lastActivity = .now()
        guard !self.closed else { return }
        var delivered = false
        for record in records {
            // An upload admitted before the session was authenticated carries nothing after it (the client ends
            // it and signs the next one): whatever else arrives on it is not the client's.
            guard signed || !self.isAuthenticated else { break }
            switch record {
            case .data(let offset, let payload):
                switch self.up.accept(offset: offset, payload: payload) {
                case .deliver(let bytes):
                    delivered = true
                    self.relay.deliver(bytes, from: self)
                case .duplicate:
                    break
                case .gap:
                    self.closeNow(error: TransportError.protocolViolation("\(self.kind): upstream bytes skipped an offset"),
                                  sendCloseRecord: true)
                    return
                }
            case .acknowledge(let offset):
                guard self.applyAcknowledgement(offset) else { return }
            case .close:
                self.closeNow(error: nil, sendCloseRecord: false)
                return
            }
        }
        if delivered {
            self.relay.readComplete(from: self)
            self.scheduleAckWrite()
        }
    }

    /// A POST body ended (or its TCP connection closed); returns the upstream acknowledgement for its response.
    func uploadFinished(channel: any Channel) -> UInt64 {
        self.lastActivity = .now()
        self.openUploads -= 1
        self.uploadChannels.removeValue(forKey: ObjectIdentifier(channel))
        return self.up.received
    }

    // MARK: Downstream

    private func pumpDown() {
        guard var responder = self.responder, !self.closed else { return }
        guard responder.nextOffset < self.down.produced else { return }
        switch responder.mode {
        case .stream:
            let pieces = self.down.pieces(from: responder.nextOffset, limit: responder.payloadLimit - responder.bytesWritten)
            var full = false
            for piece in pieces {
                var header = responder.channel.allocator.buffer(capacity: HTTPTransportRecord.dataHeaderLength)
                HTTPTransportRecord.writeDataHeader(offset: piece.offset, length: piece.bytes.readableBytes, to: &header)
                let allocator = responder.channel.allocator
                let wireHeader = responder.shape.wire(header, allocator: allocator)
                let wirePayload = responder.shape.wire(piece.bytes, allocator: allocator)
                let length = wireHeader.readableBytes + wirePayload.readableBytes
                // Small answers: a piece that would take the body past the client's limit goes in the next one.
                if responder.wireBytesWritten > 0 && responder.wireBytesWritten + length > responder.wireLimit {
                    full = true
                    break
                }
                responder.channel.write(HTTPServerResponsePart.body(.byteBuffer(wireHeader)), promise: nil)
                responder.channel.write(HTTPServerResponsePart.body(.byteBuffer(wirePayload)), promise: nil)
                responder.bytesWritten += piece.bytes.readableBytes
                responder.wireBytesWritten += length
                responder.nextOffset = piece.offset + UInt64(piece.bytes.readableBytes)
            }
            responder.channel.flush()
            self.responder = responder
            if full || responder.bytesWritten >= responder.payloadLimit || responder.wireBytesWritten >= responder.wireLimit {
                self.finishResponder(responder)
            }
        case .poll:
            self.finishResponder(responder)
        }
    }

    /// Ends the current response: a polling one carries whatever is there to send.
    private func finishResponder(_ responder: DownResponder) {
        responder.timer?.cancel()
        if let current = self.responder, current.channel === responder.channel { self.responder = nil }
        var records: [HTTPTransportRecord] = []
        if !responder.headSent {
            records.append(.acknowledge(self.up.received))
            for piece in self.down.pieces(from: responder.nextOffset, limit: responder.payloadLimit) {
                records.append(.data(offset: piece.offset, payload: piece.bytes))
            }
            if self.closed { records.append(.close) }
            Self.respondEmpty(channel: responder.channel, records: records, shape: responder.shape)
        } else {
            if self.closed {
                let close = responder.shape.wire(HTTPTransportRecord.close.encoded(), allocator: responder.channel.allocator)
                responder.channel.write(HTTPServerResponsePart.body(.byteBuffer(close)), promise: nil)
            }
            let channel = responder.channel
            let ended = channel.writeAndFlush(HTTPServerResponsePart.end(nil))
            if responder.closeDelimited { ended.whenComplete { _ in channel.close(promise: nil) } }
        }
    }

    private func scheduleAckWrite() {
        guard !self.ackWriteScheduled, let responder = self.responder, responder.mode == .stream else { return }
        self.ackWriteScheduled = true
        self.eventLoop.execute { [self] in
            self.ackWriteScheduled = false
            guard let responder = self.responder, responder.mode == .stream, self.ackWritten < self.up.received else { return }
            self.ackWritten = self.up.received
            let ack = responder.shape.wire(HTTPTransportRecord.acknowledge(self.up.received).encoded(), allocator: responder.channel.allocator)
            responder.channel.writeAndFlush(HTTPServerResponsePart.body(.byteBuffer(ack)), promise: nil)
        }
    }

    private func applyAcknowledgement(_ offset: UInt64) -> Bool {
        switch self.down.acknowledge(offset) {
        case .advanced:
            self.updateWritability()
            return true
        case .unchanged:
            return true
        case .beyondProduced:
            self.closeNow(error: TransportError.protocolViolation("\(self.kind): the client acknowledged bytes never sent"),
                          sendCloseRecord: true)
            return false
        }
    }

    private func updateWritability() {
        let writable = self.isWritable
        guard writable != self.wasWritable else { return }
        self.wasWritable = writable
        self.relay.writabilityChanged(of: self)
    }

    // MARK: Closing

    private func checkIdle() {
        guard !self.closed, self.responder == nil, self.openUploads == 0 else { return }
        if NIODeadline.now() - self.lastActivity >= self.settings.idleTimeout {
            self.closeNow(error: TransportError.timedOut(self.kind, phase: "next request", seconds: self.settings.idleTimeout.seconds),
                          sendCloseRecord: false)
        }
    }

    private func closeNow(error: (any Error)?, sendCloseRecord: Bool) {
        guard !self.closed else { return }
        let delegateWaits = self.relay.markClosed(error: error)
        self.idleTask?.cancel()
        self.idleTask = nil
        let hadResponder = self.responder != nil
        if let responder = self.responder {
            if sendCloseRecord {
                self.finishResponder(responder)
            } else {
                responder.timer?.cancel()
                self.responder = nil
                responder.channel.close(promise: nil)
            }
        }
        for channel in self.uploadChannels.values { channel.close(promise: nil) }
        self.uploadChannels = [:]
        if sendCloseRecord && !hadResponder && self.down.unacknowledgedBytes > 0 {
            // What the session sent last (a GOAWAY that refuses a resumption, say) has not been fetched: keep it,
            // and the id, for the client's next GET.
            self.lingerTask = self.eventLoop.scheduleTask(in: self.settings.pollHoldTime) { [self] in self.forget() }
        } else {
            self.forget()
        }
        if delegateWaits {
            // Reported from a fresh stack: close() may be called from inside a delegate callback.
            self.eventLoop.execute { [self] in self.relay.reportClose(for: self) }
        }
    }

    /// An unsigned GET after the session was authenticated: the client's own when it asked before it had the key
    /// (the WELCOME was still on its way), so it gets the rest of the handshake, never a byte after it; from anyone
    /// else, nothing.
    private func answerUnsigned(channel: any Channel, version: HTTPVersion, from offset: UInt64, shape: HTTPBodyShape) {
        let start = max(offset, self.down.acknowledged)
        guard start < self.handshakeEnd else {
            HTTPTransportRequestHandler.writeError(channel: channel, version: version, status: .forbidden,
                                                   "the request is not signed with the session's key")
            return
        }
        let records = self.down.pieces(from: start, limit: Int(self.handshakeEnd - start)).map {
            HTTPTransportRecord.data(offset: $0.offset, payload: $0.bytes)
        }
        Self.respondEmpty(channel: channel, records: records, shape: shape)
    }

    /// Frees what a closed connection kept and lets the registry forget its id.
    private func forget() {
        self.lingerTask?.cancel()
        self.lingerTask = nil
        self.down = OutboundByteLog()
        self.onClose?()
        self.onClose = nil
    }

    /// A GET on a closed connection: what the client has not received yet, then the close record.
    private func answerAfterClose(channel: any Channel, acknowledged: UInt64, shape: HTTPBodyShape) {
        var records: [HTTPTransportRecord] = []
        if self.lingerTask != nil {
            _ = self.down.acknowledge(acknowledged)
            let limit = shape.recordBytes(inWireBytes: self.settings.maximumPollResponseBytes)
            for piece in self.down.pieces(from: self.down.acknowledged, limit: limit) {
                records.append(.data(offset: piece.offset, payload: piece.bytes))
            }
        }
        records.append(.close)
        Self.respondEmpty(channel: channel, records: records, shape: shape)
        self.forget()
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
