import Logging
import NIOCore
import NIOHTTP1

/// The client end of one chunked or polling transport connection.
///
/// Downstream: GETs to `<prefix>/down`, one at a time: a long chunked response (`stream`) or a held poll
/// (`poll`), each naming the offset received so far, so the server resends whatever a cut response lost.
/// Upstream: a long chunked POST (`stream`) or one short POST per batch (`batch`) to `<prefix>/up`, carrying
/// DATA records by offset; the server acknowledges them on the downstream response and in each POST's answer.
/// A streaming POST whose bytes are not acknowledged within ``HTTPTransportClientSettings/upstreamAckTimeout``
/// means the path buffers request bodies: upstream then switches to short POSTs, from the last acknowledgement.
///
/// What each direction does next is decided by a pure machine (``HTTPUpstreamStateMachine``,
/// ``HTTPDownstreamStateMachine``); this class carries out their actions: the HTTP connections, timers, record
/// encoding in the body shape of the moment, and the content rules shared by both directions.
///
/// Confined to ``eventLoop``.
final class HTTPClientTransportConnection: TransportConnection, UpstreamModeReporting {
    enum DownMode: String {
        case stream
        case poll
    }

    let id: String
    let kind: TransportKind
    let eventLoop: any EventLoop
    let peerDescription: String
    private let route: HTTPRoute
    private let settings: HTTPTransportClientSettings
    private let connectTimeout: TimeAmount
    private let maximumRecordPayload: Int
    private var logger: Logger
    var upMode: HTTPUpstreamStateMachine.Mode { self.up.mode }
    var upstreamUsesShortRequests: Bool { self.kind == .chunked && self.up.mode == .batch }
    var onUpstreamModeChange: (() -> Void)?
    let downMode: DownMode
    /// The shape of the bodies now; the next of ``HTTPTransportClientSettings/bodyShapes`` once the path refuses it.
    private(set) var bodyShape: HTTPBodyShape
    /// Where this connection's session keeps the step it reached, for the connections it resumes on.
    private let bodyShapeMemory: BodyShapeMemory?
    /// What the path refused so far, for the error when no shape is left.
    private var shapeRefusals: [String] = []
    /// Set after the last shape was refused too: every body, each way, is at most this long on the wire.
    private(set) var bodyByteLimit: Int?
    /// The largest POST body on the wire now.
    private var postBodyBytes: Int { min(self.settings.maximumPostBodyBytes, self.bodyByteLimit ?? .max) }

    private let relay = TransportDelegateRelay()
    private var closed: Bool { self.relay.isClosed }
    private var wasWritable = true

    // Downstream: what to do next is ``HTTPDownstreamStateMachine``'s; the connection, timers and decoders are here.
    private var down: HTTPDownstreamStateMachine
    private var downChannel: HTTPClientChannel?
    /// The GET's timeout, or the wait before the next one after a failure.
    private var downTimer: Scheduled<Void>?
    private var downDecoder: NIOSingleStepByteToMessageProcessor<HTTPTransportRecordDecoder>?
    private var downText: Base64LineDecoder?
    private var downAckTimer: Scheduled<Void>?

    // Upstream: what to do next is ``HTTPUpstreamStateMachine``'s; the connection, timers and decoders are here.
    private var up: HTTPUpstreamStateMachine
    private var upChannel: HTTPClientChannel?
    /// The POST's maximum age or its timeout, or the wait before the next one after a failure.
    private var upTimer: Scheduled<Void>?
    private var upDecoder: NIOSingleStepByteToMessageProcessor<HTTPTransportRecordDecoder>?
    private var upText: Base64LineDecoder?
    private var ackWatchdog: Scheduled<Void>?
    /// Cleared when the path turns out to close connections after each response (tinyproxy does, without
    /// saying so): from then on every request gets a fresh connection instead of failing on a stale one.
    private var reuseConnections = true
    /// Signs every request once the session is authenticated (see ``HTTPRequestSigner``).
    private var signer: HTTPRequestSigner?
    /// Requests made on this connection; each carries its number, signed, and the server takes none twice.
    private var requestCounter: UInt64 = 0

    init(
        id: String,
        kind: TransportKind,
        route: HTTPRoute,
        options: TransportOptions,
        eventLoop: any EventLoop,
        firstChannel: HTTPClientChannel?
    ) {
        self.id = id
        self.kind = kind
        self.route = route
        self.settings = options.http
        self.connectTimeout = options.connectTimeout
        self.maximumRecordPayload = options.maximumMessageSize
        self.eventLoop = eventLoop
        self.peerDescription = route.proxy.map { "\(route.endpoint) via \($0)" } ?? route.endpoint.description
        self.logger = options.logger
        self.logger[metadataKey: "transport"] = "\(kind)"
        self.up = HTTPUpstreamStateMachine(streaming: kind == .chunked, settings: options.http)
        self.downMode = kind == .chunked ? .stream : .poll
        self.down = HTTPDownstreamStateMachine(streaming: kind == .chunked, settings: options.http)
        self.bodyShapeMemory = options.bodyShapeMemory
        let learnt = options.bodyShapeMemory?.learnt
        self.bodyShape = learnt?.shape ?? options.http.bodyShapes.first ?? .binary
        self.bodyByteLimit = learnt?.byteLimit
        self.upChannel = firstChannel
    }

    var isWritable: Bool { self.up.isWritable }

    /// Starts the downstream requests (messages that arrive before ``start(delegate:)`` wait for it).
    func begin() {
        self.perform(self.down.begin())
    }

    func start(delegate: any TransportConnectionDelegate) {
        self.eventLoop.preconditionInEventLoop()
        self.relay.start(delegate, for: self)
    }

    func send(_ message: ByteBuffer) {
        guard !self.closed else { return }
        self.perform(self.up.append(message, acknowledgementDue: self.down.acknowledgementDue))
        self.updateWritability()
    }

    func close() {
        guard !self.closed else { return }
        self.sendCloseRecord()
        self.closeNow(error: nil)
    }

    /// Every request from now on is signed. The streaming POST still open went out unsigned (it carried the
    /// handshake), and the server takes nothing more from it: end it, the next one is signed.
    func sessionAuthenticated(key: [UInt8]) {
        self.eventLoop.preconditionInEventLoop()
        self.signer = HTTPRequestSigner(sessionKey: key, connectionID: self.id)
        self.perform(self.up.endStream())
    }

    /// A request head for `endpoint`: the connection named in a header and a cookie, not the URL (access logs keep
    /// URLs), the request's number in the URL (no two URLs alike, so no cache can answer one for another), and the
    /// signature once there is a signer (a header and a cookie too: ``CulvertRequestField``).
    private func requestHead(_ method: HTTPMethod, endpoint: String, offset: UInt64, query: String, headers extra: HTTPHeaders = [:]) -> HTTPRequestHead {
        self.requestCounter += 1
        var headers = self.route.baseHeaders()
        CulvertRequestField.connection.add(self.id, to: &headers)
        headers.add(name: "Accept", value: self.bodyShape.contentType)
        if let signer = self.signer {
            CulvertRequestField.auth.add(
                signer.signature(method: method.rawValue, endpoint: endpoint, offset: offset, counter: self.requestCounter), to: &headers
            )
        }
        headers.add(contentsOf: extra)
        let target = self.route.requestTarget("\(endpoint)?\(query)&n=\(self.requestCounter)")
        return HTTPRequestHead(version: .http1_1, method: method, uri: target, headers: headers)
    }

    // MARK: Downstream

    /// Carries out what the downstream machine decided.
    private func perform(_ action: HTTPDownstreamStateMachine.Action) {
        switch action {
        case .none:
            break
        case .connect(let request):
            self.connectDown(request)
        case .reconnect(let request):
            self.dropDownConnection()
            self.connectDown(request)
        case .send(let request, let offset, let timeout):
            self.sendDown(request, offset: offset, timeout: timeout)
        case .cancelTimeout:
            self.downTimer?.cancel()
        case .retry(let delay, let failures, let error):
            self.dropDownConnection()
            self.logger.debug("downstream request failed (\(error)); retry \(failures) in \(delay.roundedText)")
            self.downTimer = self.eventLoop.assumeIsolated().scheduleTask(in: delay) { [self] in
                self.perform(self.down.retryDue())
            }
        case .fail(let error):
            self.closeNow(error: error)
        }
    }

    private func connectDown(_ request: UInt64) {
        self.downTimer?.cancel()
        self.withChannel(\.downChannel) { [self] _ in
            self.perform(self.down.connectionReady(request))
        } onFailure: { [self] error in
            self.downFailed(request, error)
        }
    }

    private func sendDown(_ request: UInt64, offset: UInt64, timeout: TimeAmount) {
        guard let channel = self.downChannel else { return }
        self.downDecoder = self.makeDecoder()
        self.downText = self.bodyShape.makeDecoder()
        let limit = self.bodyByteLimit.map { "&r=\($0)" } ?? ""
        let head = self.requestHead(.GET, endpoint: "down", offset: offset, query: "m=\(self.downMode.rawValue)&a=\(offset)\(limit)")
        self.downTimer = self.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
            self.downFailed(request, TransportError.timedOut(self.kind, phase: "downstream request", seconds: timeout.seconds))
        }
        channel.send(head, body: nil, end: true) { [self] event in
            self.downEvent(event, of: request)
        }
    }

    private func downEvent(_ event: HTTPClientChannel.Event, of request: UInt64) {
        guard self.down.isCurrent(request) else { return }
        switch event {
        case .head(let head):
            self.perform(self.down.responseHead(request))
            if self.refusedByContentRules(head, method: "GET") { return }
            if head.status != .ok { self.refused(head, method: "GET") }
        case .body(let body):
            var records: [HTTPTransportRecord] = []
            do {
                let bytes = try self.downText?.decode(body) ?? body
                try self.downDecoder?.process(buffer: bytes) { records.append($0) }
            } catch {
                self.closeNow(error: TransportError.protocolViolation("\(self.kind): malformed downstream body: \(error)"))
                return
            }
            self.handleRecords(records)
        case .end:
            self.downTimer?.cancel()
            self.perform(self.down.responseEnded(request))
        case .failed(let error):
            self.downFailed(request, error)
        }
    }

    /// GET `request` failed; whether only because its connection was stale is asked of the connection only while the
    /// GET is the current one (the question closes the connection when it was).
    private func downFailed(_ request: UInt64, _ error: any Error) {
        guard self.down.isCurrent(request) else { return }
        self.perform(self.down.requestFailed(request, error: error, staleConnection: self.staleConnection(self.downChannel)))
    }

    /// Drops the connection of the GET in flight, and its timeout.
    private func dropDownConnection() {
        self.downTimer?.cancel()
        self.downChannel?.close()
        self.downChannel = nil
    }

    // MARK: Records from the server

    private func handleRecords(_ records: [HTTPTransportRecord]) {
        var delivered = false
        for record in records {
            guard !self.closed else { return }
            switch record {
            case .data(let offset, let payload):
                // Progress (the machine counts failures in a row again): a request cut after this still got somewhere.
                switch self.down.accept(offset: offset, payload: payload) {
                case .deliver(let bytes):
                    delivered = true
                    self.relay.deliver(bytes, from: self)
                case .duplicate:
                    break
                case .gap:
                    self.closeNow(error: TransportError.protocolViolation("\(self.kind): downstream bytes skipped an offset"))
                    return
                }
            case .acknowledge(let offset):
                self.applyUpstreamAcknowledgement(offset)
            case .close:
                self.closeNow(error: nil)
                return
            }
        }
        guard delivered else { return }
        self.relay.readComplete(from: self)
        switch self.down.deliveredRead() {
        case .none:
            break
        case .acknowledgeNow:
            self.downAckTimer?.cancel()
            self.downAckTimer = nil
            self.pumpUp()
        case .armTimer:
            self.downAckTimer = self.eventLoop.assumeIsolated().scheduleTask(in: HTTPDownstreamStateMachine.acknowledgementDelay) { [self] in
                self.downAckTimer = nil
                if self.down.acknowledgementTimerFired() { self.pumpUp() }
            }
        }
    }

    private func applyUpstreamAcknowledgement(_ offset: UInt64) {
        switch self.up.acknowledge(offset) {
        case .advanced:
            self.ackWatchdog?.cancel()
            self.ackWatchdog = nil
            self.armAckWatchdog()
            self.updateWritability()
        case .unchanged:
            break
        case .beyondProduced:
            self.closeNow(error: TransportError.protocolViolation("\(self.kind): the server acknowledged bytes never sent"))
        }
    }

    // MARK: Upstream

    /// Sends what waits upstream, and any ACK the download owes.
    private func pumpUp() {
        self.perform(self.up.pump(acknowledgementDue: self.down.acknowledgementDue))
    }

    /// Carries out what the upstream machine decided.
    private func perform(_ action: HTTPUpstreamStateMachine.Action) {
        switch action {
        case .none:
            break
        case .connect(let request):
            self.upTimer?.cancel()
            self.withChannel(\.upChannel) { [self] _ in
                self.perform(self.up.connectionReady(request))
            } onFailure: { [self] error in
                self.upFailed(request, error)
            }
        case .openStream(let request, let offset, let maxAge):
            self.openStream(request, offset: offset, maxAge: maxAge)
        case .writeStream:
            self.writeStream()
        case .sendBatch(let request, let offset, let timeout):
            self.sendBatch(request, offset: offset, timeout: timeout)
        case .endStream(let request, let timeout):
            self.upTimer?.cancel()
            self.upChannel?.endBody()
            self.upTimer = self.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
                self.upFailed(request, TransportError.timedOut(self.kind, phase: "upstream request", seconds: timeout.seconds))
            }
        case .reconnect:
            self.dropUpConnection()
            self.pumpUp()
        case .switchToBatches(let reason):
            self.logger.warning("upstream: \(reason); switching upstream to short POSTs")
            self.dropUpConnection()
            self.ackWatchdog?.cancel()
            self.ackWatchdog = nil
            self.up.switchToBatches()
            self.pumpUp()
            self.onUpstreamModeChange?()
        case .retry(let delay, let failures, let error):
            self.dropUpConnection()
            self.logger.debug("upstream request failed (\(error)); retry \(failures) in \(delay.roundedText)")
            self.upTimer = self.eventLoop.assumeIsolated().scheduleTask(in: delay) { [self] in
                self.perform(self.up.retryDue(acknowledgementDue: self.down.acknowledgementDue))
            }
        case .fail(let error):
            self.closeNow(error: error)
        }
    }

    /// A POST's head; `offset` is where its first DATA record starts (signed with it).
    private func uploadHead(streaming: Bool, contentLength: Int, offset: UInt64) -> HTTPRequestHead {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: self.bodyShape.contentType)
        if streaming {
            headers.add(name: "Transfer-Encoding", value: "chunked")
        } else {
            headers.add(name: "Content-Length", value: String(contentLength))
        }
        return self.requestHead(.POST, endpoint: "up", offset: offset, query: "o=\(offset)", headers: headers)
    }

    private func openStream(_ request: UInt64, offset: UInt64, maxAge: TimeAmount) {
        guard let channel = self.upChannel else { return }
        self.upDecoder = self.makeDecoder()
        self.upText = self.bodyShape.makeDecoder()
        channel.send(self.uploadHead(streaming: true, contentLength: 0, offset: offset), body: nil, end: false) { [self] event in
            self.upEvent(event, of: request)
        }
        self.upTimer = self.eventLoop.assumeIsolated().scheduleTask(in: maxAge) { [self] in
            self.perform(self.up.streamAged(request))
        }
        self.writeStream()
    }

    /// Writes what is unsent, and any ACK due, into the open streaming body.
    private func writeStream() {
        guard case .streaming = self.up.state, let channel = self.upChannel else { return }
        let allocator = channel.channel.allocator
        var wrote = false
        if self.down.acknowledgementDue {
            let ack = self.bodyShape.wire(
                HTTPTransportRecord.acknowledge(self.down.takeAcknowledgement().offset).encoded(allocator: allocator),
                allocator: allocator
            )
            self.up.wroteToStream(wireBytes: ack.readableBytes)
            channel.writeBody(ack)
            wrote = true
        }
        var wroteData = false
        var full = false
        // Small bodies (``bodyByteLimit``): a piece that would take the body past it waits for the next POST.
        let wireLimit = self.bodyByteLimit ?? .max
        let pieces = self.up.unsentPieces(limit: self.bodyByteLimit.map { self.bodyShape.recordBytes(inWireBytes: $0) } ?? .max)
        for piece in pieces {
            var header = allocator.buffer(capacity: HTTPTransportRecord.dataHeaderLength)
            HTTPTransportRecord.writeDataHeader(offset: piece.offset, length: piece.bytes.readableBytes, to: &header)
            let wireHeader = self.bodyShape.wire(header, allocator: allocator)
            let wirePayload = self.bodyShape.wire(piece.bytes, allocator: allocator)
            let length = wireHeader.readableBytes + wirePayload.readableBytes
            if wroteData && self.up.streamWireBytes + length > wireLimit {
                full = true
                break
            }
            channel.writeBody(wireHeader)
            channel.writeBody(wirePayload)
            self.up.wroteToStream(
                wireBytes: length, payloadBytes: piece.bytes.readableBytes, endingAt: piece.offset + UInt64(piece.bytes.readableBytes)
            )
            wroteData = true
        }
        if wrote || wroteData { channel.flush() }
        if wroteData { self.armAckWatchdog() }
        // What did not fit goes in the next POST, begun as soon as this one is answered.
        self.perform(self.up.streamWriteFinished(full: full, wireLimit: wireLimit))
    }

    private func armAckWatchdog() {
        guard self.up.armWatchdog() else { return }
        self.ackWatchdog = self.eventLoop.assumeIsolated().scheduleTask(in: self.settings.upstreamAckTimeout) { [self] in
            self.ackWatchdog = nil
            if let reason = self.up.watchdogFired() { self.perform(.switchToBatches(reason: reason)) }
        }
    }

    /// Drops the POST in flight's connection and its timer (whatever still comes of the POST is ignored).
    private func dropUpConnection() {
        self.upTimer?.cancel()
        self.upChannel?.close()
        self.upChannel = nil
    }

    private func sendBatch(_ request: UInt64, offset firstOffset: UInt64, timeout: TimeAmount) {
        guard let channel = self.upChannel else { return }
        var body = channel.channel.allocator.buffer(capacity: 1024)
        let acknowledgement = self.down.takeAcknowledgement()
        if acknowledgement.timerWasArmed {
            self.downAckTimer?.cancel()
            self.downAckTimer = nil
        }
        HTTPTransportRecord.acknowledge(acknowledgement.offset).write(to: &body)
        let budget = self.bodyShape.recordBytes(inWireBytes: self.postBodyBytes) - 64
        for piece in self.up.unsentPieces(limit: budget) {
            HTTPTransportRecord.data(offset: piece.offset, payload: piece.bytes).write(to: &body)
            self.up.sentBatch(upTo: piece.offset + UInt64(piece.bytes.readableBytes))
        }
        self.upDecoder = self.makeDecoder()
        self.upText = self.bodyShape.makeDecoder()
        body = self.bodyShape.wire(body, allocator: channel.channel.allocator)
        self.upTimer = self.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
            self.upFailed(request, TransportError.timedOut(self.kind, phase: "upstream request", seconds: timeout.seconds))
        }
        channel.send(self.uploadHead(streaming: false, contentLength: body.readableBytes, offset: firstOffset), body: body, end: true) { [self] event in
            self.upEvent(event, of: request)
        }
    }

    private func upEvent(_ event: HTTPClientChannel.Event, of request: UInt64) {
        guard self.up.isCurrent(request) else { return }
        switch event {
        case .head(let head):
            if head.status != .ok && self.route.proxyError(for: head, method: "POST") == nil && [400, 411, 413].contains(head.status.code) {
                let action = self.up.streamingRefused(request, status: head.status)
                if case .switchToBatches = action {
                    self.perform(action)
                    return
                }
            }
            if self.refusedByContentRules(head, method: "POST") { return }
            if head.status != .ok { self.refused(head, method: "POST") }
        case .body(let body):
            var records: [HTTPTransportRecord] = []
            do {
                let bytes = try self.upText?.decode(body) ?? body
                try self.upDecoder?.process(buffer: bytes) { records.append($0) }
            } catch {
                self.closeNow(error: TransportError.protocolViolation("\(self.kind): malformed upload answer: \(error)"))
                return
            }
            self.handleRecords(records)
        case .end:
            self.upTimer?.cancel()
            self.perform(self.up.responseEnded(request, acknowledgementDue: self.down.acknowledgementDue))
        case .failed(let error):
            self.upFailed(request, error)
        }
    }

    /// POST `request` failed; whether only because its connection was stale is asked of the connection only while the
    /// POST is the current one (the question closes the connection when it was).
    private func upFailed(_ request: UInt64, _ error: any Error) {
        guard self.up.isCurrent(request) else { return }
        self.perform(self.up.requestFailed(request, error: error, staleConnection: self.staleConnection(self.upChannel)))
    }

    // MARK: Shared

    /// Whether `channel` failed only because the other end had closed it while idle; if so, stops reusing
    /// connections and closes it (the request is then sent again at once on a fresh one).
    private func staleConnection(_ channel: HTTPClientChannel?) -> Bool {
        if let channel, channel.failedForNewProxyCredentials {
            // The proxy wants the request again with new credentials (a stale Digest nonce), on a new connection.
            channel.close()
            return true
        }
        guard let channel, channel.failedAsStaleConnection else { return false }
        if self.reuseConnections {
            self.logger.debug("the path closes HTTP connections after each response; using a new connection per request")
            self.reuseConnections = false
        }
        channel.close()
        return true
    }

    private func makeDecoder() -> NIOSingleStepByteToMessageProcessor<HTTPTransportRecordDecoder> {
        NIOSingleStepByteToMessageProcessor(
            HTTPTransportRecordDecoder(maximumPayloadLength: self.maximumRecordPayload),
            maximumBufferSize: self.maximumRecordPayload + 64
        )
    }

    private func withChannel(
        _ slot: ReferenceWritableKeyPath<HTTPClientTransportConnection, HTTPClientChannel?>,
        _ body: @escaping (HTTPClientChannel) -> Void,
        onFailure: @escaping (any Error) -> Void
    ) {
        if let channel = self[keyPath: slot], channel.isIdle, self.reuseConnections {
            body(channel)
            return
        }
        self[keyPath: slot]?.close()
        self[keyPath: slot] = nil
        HTTPClientChannel.dial(route: self.route, on: self.eventLoop, timeout: self.connectTimeout)
            .assumeIsolated()
            .whenComplete { [self] result in
                switch result {
                case .success(let bound):
                    let channel = bound.value
                    guard !self.closed else {
                        channel.close()
                        return
                    }
                    self[keyPath: slot] = channel
                    body(channel)
                case .failure(let error):
                    onFailure(error)
                }
            }
    }

    /// Whether `head` is something in the path refusing this request's body shape rather than the server answering
    /// it: a 403, 415 or 451 without the server's ``HTTPTransportRequestHandler/errorHeaderName``, or a 200 whose
    /// content type is not the one asked for (a block page in its place). The `open` request before it passed, so
    /// the path lets the server's URL through: what it refuses is these requests' content. Then the connection moves
    /// on to the next shape and makes its requests again (offsets make that safe), or ends, when no shape is left,
    /// with ``TransportError/contentRefused(_:refusals:)``; either way it returns true.
    private func refusedByContentRules(_ head: HTTPResponseHead, method: String) -> Bool {
        let refusal: String
        if head.status == .ok {
            guard let type = head.headers.first(name: "Content-Type"), !self.bodyShape.matches(contentType: type) else { return false }
            refusal = "\(self.bodyShape.contentType) to a \(method) answered with \(type) instead"
        } else {
            guard [403, 415, 451].contains(head.status.code),
                !head.headers.contains(name: HTTPTransportRequestHandler.errorHeaderName)
            else { return false }
            refusal = "a \(method) with \(self.bodyShape.contentType) bodies answered \(head.status.code) \(head.status.reasonPhrase)"
        }
        self.shapeRefusals.append(refusal)
        let shapes = self.settings.bodyShapes
        if let index = shapes.firstIndex(of: self.bodyShape), index + 1 < shapes.count {
            self.bodyShape = shapes[index + 1]
            self.logger.warning("the path refused \(refusal); bodies go as \(self.bodyShape.contentType) from now on")
        } else if self.bodyByteLimit == nil {
            // Every type refused: what the path refuses may be the size (a reply size limit refuses any type).
            self.bodyByteLimit = self.settings.smallBodyBytes
            self.logger.warning("the path refused \(refusal); bodies go as \(self.bodyShape.contentType) of at most \(self.settings.smallBodyBytes) bytes from now on")
        } else {
            self.closeNow(error: TransportError.contentRefused(self.kind, refusals: self.shapeRefusals.joined(separator: "; then ")))
            return true
        }
        self.bodyShapeMemory?.remember(.init(shape: self.bodyShape, byteLimit: self.bodyByteLimit))
        // Every request in flight was made in the old shape: make them again in the new one.
        self.dropUpConnection()
        self.up.abandon()
        self.perform(self.down.restart())
        self.pumpUp()
        self.onUpstreamModeChange?()
        return true
    }

    /// A request answered with something other than 200: the connection is gone or something refuses it.
    private func refused(_ head: HTTPResponseHead, method: String) {
        if let proxyError = self.route.proxyError(for: head, method: method) {
            self.closeNow(error: proxyError)
        } else if head.status == .notFound {
            if method == "POST" && self.down.hasRequestInFlight {
                self.awaitTheServersLastWords()
            } else {
                self.closeNow(error: TransportError.connectionExpired(self.kind))
            }
        } else if head.status == .payloadTooLarge {
            self.closeNow(error: TransportError.unexpectedStatus(
                self.kind, status: 413, reason: head.status.reasonPhrase,
                hint: "something in the path limits request bodies; lower the POST size limit"))
        } else {
            self.closeNow(error: TransportError.unexpectedStatus(
                self.kind, status: Int(head.status.code), reason: head.status.reasonPhrase,
                hint: "the server or a proxy in the path refused a \(method)"))
        }
    }

    /// A POST found the connection forgotten while a GET is in flight: the server ended it, and what it said last
    /// (the GOAWAY that says why, then the close record) may be in that GET's answer, which is the better reason
    /// than "expired". Upstream stops; the GET goes on, and the connection is closed as expired only if it brings
    /// no close within the time a poll's answer takes to come back.
    private func awaitTheServersLastWords() {
        self.dropUpConnection()
        self.up.close()
        self.upTimer = self.eventLoop.assumeIsolated().scheduleTask(in: Self.lastWordsTimeout) { [self] in
            self.closeNow(error: TransportError.connectionExpired(self.kind))
        }
    }

    /// How long a connection the server forgot waits for the answer to its GET in flight.
    static let lastWordsTimeout = TimeAmount.seconds(2)

    private func updateWritability() {
        let writable = self.isWritable
        guard writable != self.wasWritable else { return }
        self.wasWritable = writable
        self.relay.writabilityChanged(of: self)
    }

    /// Tells the server the connection ends, best effort: in the open streaming POST, or in a last short POST.
    private func sendCloseRecord() {
        if case .streaming = self.up.state, let channel = self.upChannel {
            channel.writeBody(self.bodyShape.wire(HTTPTransportRecord.close.encoded(), allocator: channel.channel.allocator))
            channel.endBody()
            self.upChannel = nil
            // Let the last chunk go out before the connection closes.
            let connection = channel.channel
            connection.eventLoop.scheduleTask(in: .seconds(2)) { connection.close(promise: nil) }
            return
        }
        // The close goes out on a request of its own, while the last upload (the session's last ACK, say) may
        // still be on its way and is cut by the close: this one carries, ahead of the close, what the server has
        // not confirmed and an ACK of what came down, so the peer's last word and ours both arrive.
        var body = ByteBufferAllocator().buffer(capacity: 256)
        HTTPTransportRecord.acknowledge(self.down.cursor.received).write(to: &body)
        let firstOffset = self.up.log.acknowledged
        for piece in self.up.log.pieces(from: firstOffset, limit: self.bodyShape.recordBytes(inWireBytes: self.postBodyBytes) - 64) {
            HTTPTransportRecord.data(offset: piece.offset, payload: piece.bytes).write(to: &body)
        }
        HTTPTransportRecord.close.write(to: &body)
        body = self.bodyShape.wire(body, allocator: ByteBufferAllocator())
        let head = self.uploadHead(streaming: false, contentLength: body.readableBytes, offset: firstOffset)
        let route = self.route
        HTTPClientChannel.dial(route: route, on: self.eventLoop, timeout: self.connectTimeout)
            .assumeIsolated()
            .whenSuccess { [body] bound in
                let channel = bound.value
                channel.send(head, body: body, end: true) { event in
                    switch event {
                    case .end, .failed: channel.close()
                    case .head, .body: break
                    }
                }
                let connection = channel.channel
                connection.eventLoop.scheduleTask(in: .seconds(2)) { connection.close(promise: nil) }
            }
    }

    private func closeNow(error: (any Error)?) {
        guard !self.closed else { return }
        let delegateWaits = self.relay.markClosed(error: error)
        self.down.close()
        self.up.close()
        for timer in [self.downTimer, self.downAckTimer, self.upTimer, self.ackWatchdog] { timer?.cancel() }
        self.downChannel?.close()
        self.downChannel = nil
        self.upChannel?.close()
        self.upChannel = nil
        if delegateWaits {
            self.eventLoop.assumeIsolated().execute { [self] in self.relay.reportClose(for: self) }
        }
    }
}
