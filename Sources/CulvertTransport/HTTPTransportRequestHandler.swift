import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1

/// Serves the HTTP requests that no upgrade took, under the path prefix:
///
/// - `POST <prefix>/open?t=chunked|polling` creates a chunked or polling connection and answers its id;
/// - `GET <prefix>/down?m=stream|poll&a=ACK&n=COUNTER` carries downstream bytes;
/// - `POST <prefix>/up?o=OFFSET&n=COUNTER` carries upstream records;
/// - `GET <prefix>/probe?n=N&i=MS` answers N small chunks sent MS milliseconds apart, so that the negotiator can
///   see whether the path delivers a streaming response as it is sent;
/// - `GET <prefix>` (or `<prefix>/`) answers a short plain-text page naming culvert and its version;
/// - `<prefix>/ws` or `<prefix>/raw` without `Upgrade` gets 426 (a proxy stripped it), anything else 404,
///   so that a client and the negotiator can tell the cases apart.
///
/// `down` and `up` name their connection in a `Culvert-Connection` header (or, from older clients, `c=ID`) and, once
/// its session is authenticated, carry a `Culvert-Auth` signature (``HTTPRequestSigner``) or get 403.
final class HTTPTransportRequestHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private enum State {
        case idle
        /// A request whose answer waits for its end.
        case pending(HTTPRequestHead)
        case upload(HTTPServerConnectionHandle, HTTPRequestHead, signed: Bool)
        case download(HTTPServerConnectionHandle)
        /// A request being answered with an error; its body is ignored.
        case discarding
    }

    private let pathPrefix: String
    private let registry: HTTPConnectionRegistry
    private let maximumRecordPayload: Int
    private let maximumPendingRequests: Int
    private let settings: HTTPTransportServerSettings
    private let onConnection: @Sendable (any TransportConnection) -> Void
    private var state = State.idle
    /// Cuts a request body that is too slow or too long in coming (a descriptor held open by a trickle).
    private var bodyTimer: Scheduled<Void>?
    /// Re-arms ``bodyTimer`` on every body part when set (a signed streaming upload may idle only this long).
    private var bodyIdleTimeout: TimeAmount?
    /// Body bytes an unsigned upload may still send.
    private var unsignedBodyBudget = 0
    private var uploadTotalTimer: Scheduled<Void>?
    /// Called at the end of every request that this handler took: puts an upgrade handler back in front of it, so
    /// that the connection's next request may be an upgrade too.
    var rearmUpgrade: ((ChannelHandlerContext) -> Void)?
    private var decoder: NIOSingleStepByteToMessageProcessor<HTTPTransportRecordDecoder>?
    /// The upload's body shape (its `Content-Type`), and the base64 decoder before `decoder` when it is text.
    private var uploadShape = HTTPBodyShape.binary
    private var textDecoder: Base64LineDecoder?

    init(
        pathPrefix: String,
        registry: HTTPConnectionRegistry,
        maximumRecordPayload: Int,
        maximumPendingRequests: Int,
        settings: HTTPTransportServerSettings,
        onConnection: @escaping @Sendable (any TransportConnection) -> Void
    ) {
        self.maximumPendingRequests = maximumPendingRequests
        self.settings = settings
        self.pathPrefix = pathPrefix
        self.registry = registry
        self.maximumRecordPayload = maximumRecordPayload
        self.onConnection = onConnection
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.armBodyTimer(context: context, head: head)
            self.begin(context: context, head: head)
        case .body(let body):
            if let idle = self.bodyIdleTimeout { self.scheduleBodyTimer(context: context, in: idle) }
            guard case .upload(let connection, _, let signed) = self.state else { return }
            if !signed {
                self.unsignedBodyBudget -= body.readableBytes
                guard self.unsignedBodyBudget >= 0 else {
                    self.abandonUpload(connection, channel: context.channel)
                    self.respondError(context: context, head: nil, status: .payloadTooLarge,
                                      "more than \(self.settings.unauthenticatedBodyBytes) bytes before the session is authenticated")
                    return
                }
            }
            self.decodeUpload(context: context, connection: connection, body: body, signed: signed)
        case .end:
            self.cancelBodyTimer()
            self.finish(context: context)
            self.rearmUpgrade?(context)
        }
    }

    // MARK: Body deadlines

    /// A request with a body gets a deadline: a stranger's (anything but a signed upload) has a short one; a
    /// signed upload an idle timeout, a total one and, when it says its length, a minimum rate.
    private func armBodyTimer(context: ChannelHandlerContext, head: HTTPRequestHead) {
        self.cancelBodyTimer()
        guard head.hasBody else { return }
        self.scheduleBodyTimer(context: context, in: self.settings.unauthenticatedBodyTimeout)
    }

    /// A signed upload: longer limits than a stranger's.
    private func armSignedUploadTimer(context: ChannelHandlerContext, head: HTTPRequestHead) {
        var total = self.settings.uploadMaximumAge
        if let length = head.declaredBodyLength {
            let rate = Int64(max(1, self.settings.minimumUploadBytesPerSecond))
            total = min(total, .seconds(10) + .milliseconds(Int64(length) * 1000 / rate))
        }
        self.bodyIdleTimeout = self.settings.uploadIdleTimeout
        self.scheduleBodyTimer(context: context, in: self.settings.uploadIdleTimeout)
        // The total deadline stands beside the idle one (which each body part re-arms).
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        self.uploadTotalTimer = context.eventLoop.assumeIsolated().scheduleTask(in: total) { loopBound.value.close(promise: nil) }
    }

    private func scheduleBodyTimer(context: ChannelHandlerContext, in delay: TimeAmount) {
        self.bodyTimer?.cancel()
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        self.bodyTimer = context.eventLoop.assumeIsolated().scheduleTask(in: delay) { loopBound.value.close(promise: nil) }
    }

    private func cancelBodyTimer() {
        self.bodyTimer?.cancel()
        self.bodyTimer = nil
        self.uploadTotalTimer?.cancel()
        self.uploadTotalTimer = nil
        self.bodyIdleTimeout = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.cancelBodyTimer()
        switch self.state {
        case .download(let connection):
            let channel = context.channel
            connection.onLoop { $0.downChannelClosed(channel) }
        case .upload(let connection, _, _):
            self.abandonUpload(connection, channel: context.channel)
        case .idle, .pending, .discarding:
            break
        }
        self.state = .idle
        context.fireChannelInactive()
    }

    /// The upload on `channel` ends without an answer (its connection closed, or it is refused).
    private func abandonUpload(_ connection: HTTPServerConnectionHandle, channel: any Channel) {
        connection.pendingUploads.withLockedValue { $0 -= 1 }
        connection.onLoop { _ = $0.uploadFinished(channel: channel) }
        self.decoder = nil
        self.textDecoder = nil
    }

    private func begin(context: ChannelHandlerContext, head: HTTPRequestHead) {
        let path = head.pathWithoutQuery
        guard path.hasPrefix(self.pathPrefix + "/") else {
            self.state = .pending(head)
            return
        }
        let query = HTTPQuery(uri: head.uri)
        switch String(path.dropFirst(self.pathPrefix.count + 1)) {
        case "down" where head.method == .GET:
            guard let connection = self.lookup(context: context, head: head, query: query) else { return }
            guard let mode = query["m"].flatMap(HTTPServerTransportConnection.DownMode.init(rawValue:)),
                let acknowledged = query["a"].flatMap({ UInt64($0) })
            else {
                self.respondError(context: context, head: head, status: .badRequest, "down needs m=stream|poll and a=OFFSET")
                return
            }
            guard let signed = self.admit(context: context, head: head, connection: connection, endpoint: "down", offset: acknowledged) else {
                return
            }
            self.state = .download(connection)
            let channel = context.channel
            let version = head.version
            let shape = HTTPBodyShape.requested(by: head)
            // A client behind a proxy that limits reply sizes asks for small responses (at least 1 KiB).
            let byteLimit = query["r"].flatMap { Int($0) }.map { max($0, 1024) }
            connection.onLoop { connection in
                connection.downRequest(
                    channel: channel, version: version, mode: mode, acknowledged: acknowledged, signed: signed, shape: shape,
                    byteLimit: byteLimit
                )
            }
        case "up" where head.method == .POST:
            guard let connection = self.lookup(context: context, head: head, query: query) else { return }
            let offset = query["o"].flatMap { UInt64($0) } ?? 0
            guard let signed = self.admit(context: context, head: head, connection: connection, endpoint: "up", offset: offset) else {
                return
            }
            if !signed && (head.declaredBodyLength ?? 0) > self.settings.unauthenticatedBodyBytes {
                self.respondError(context: context, head: head, status: .payloadTooLarge,
                                  "more than \(self.settings.unauthenticatedBodyBytes) bytes before the session is authenticated")
                return
            }
            let limit = self.maximumPendingRequests
            guard connection.pendingUploads.withLockedValue({ count in
                guard count < limit else { return false }
                count += 1
                return true
            }) else {
                self.respondError(context: context, head: head, status: .tooManyRequests, "more than \(limit) uploads at once on one connection")
                return
            }
            self.state = .upload(connection, head, signed: signed)
            // Before the session is authenticated a record is a handshake frame: a few hundred bytes.
            let recordLimit = signed ? self.maximumRecordPayload : 4096
            self.decoder = NIOSingleStepByteToMessageProcessor(
                HTTPTransportRecordDecoder(maximumPayloadLength: recordLimit),
                maximumBufferSize: recordLimit + 64
            )
            self.uploadShape = HTTPBodyShape.requested(by: head)
            self.textDecoder = self.uploadShape.makeDecoder()
            if signed {
                self.armSignedUploadTimer(context: context, head: head)
            } else {
                self.unsignedBodyBudget = self.settings.unauthenticatedBodyBytes
            }
            let channel = context.channel
            connection.onLoop { $0.uploadStarted(channel: channel) }
        default:
            self.state = .pending(head)
        }
    }

    /// Whether the request may go on (and signed or not); answers 403 and returns nil when it may not.
    private func admit(
        context: ChannelHandlerContext, head: HTTPRequestHead, connection: HTTPServerConnectionHandle,
        endpoint: String, offset: UInt64
    ) -> Bool? {
        let signature = CulvertRequestField.auth.value(in: head.headers)
        switch connection.admit(method: head.method.rawValue, endpoint: endpoint, offset: offset, signature: signature) {
        case .unsigned:
            return false
        case .signed:
            return true
        case .refused(let reason):
            self.respondError(context: context, head: head, status: .forbidden, reason)
            return nil
        }
    }

    private func lookup(context: ChannelHandlerContext, head: HTTPRequestHead, query: HTTPQuery) -> HTTPServerConnectionHandle? {
        let id = CulvertRequestField.connection.value(in: head.headers) ?? query["c"]
        guard let id, let connection = self.registry.connection(id: id) else {
            self.respondError(context: context, head: head, status: .notFound, "unknown or expired connection")
            return nil
        }
        return connection
    }

    private func decodeUpload(
        context: ChannelHandlerContext, connection: HTTPServerConnectionHandle, body: ByteBuffer, signed: Bool
    ) {
        var records: [HTTPTransportRecord] = []
        do {
            let bytes = try self.textDecoder?.decode(body) ?? body
            try self.decoder?.process(buffer: bytes) { records.append($0) }
        } catch {
            self.abandonUpload(connection, channel: context.channel)
            self.respondError(context: context, head: nil, status: .badRequest, "malformed upload: \(error)")
            return
        }
        if !records.isEmpty {
            let decoded = records
            connection.onLoop { $0.uploadRecords(decoded, signed: signed) }
        }
    }

    private func finish(context: ChannelHandlerContext) {
        switch self.state {
        case .pending(let head):
            self.state = .idle
            self.answer(context: context, head: head)
        case .upload(let connection, let head, _):
            self.state = .idle
            connection.pendingUploads.withLockedValue { $0 -= 1 }
            let truncated: Bool
            do {
                try self.textDecoder?.finish()
                try self.decoder?.finishProcessing(seenEOF: true) { _ in }
                truncated = false
            } catch {
                truncated = true
            }
            self.decoder = nil
            self.textDecoder = nil
            let channel = context.channel
            let shape = self.uploadShape
            connection.onLoop { connection in
                let acknowledged = connection.uploadFinished(channel: channel)
                if truncated {
                    Self.writeError(channel: channel, version: head.version, status: .badRequest, "the body ended inside a record")
                } else {
                    HTTPServerTransportConnection.respondEmpty(channel: channel, records: [.acknowledge(acknowledged)], shape: shape)
                }
            }
        case .download:
            // The connection answers it; the next request may follow on this TCP connection.
            self.state = .idle
        case .discarding:
            self.state = .idle
        case .idle:
            break
        }
    }

    /// The answer to `open`: the new connection's id, as a line of text.
    private static func writeOpenAnswer(channel: any Channel, version: HTTPVersion, id: String) {
        var headers = HTTPServerTransportConnection.responseHeaders()
        headers.replaceOrAdd(name: "Content-Type", value: "text/plain; charset=utf-8")
        let body = id + "\n"
        headers.add(name: "Content-Length", value: String(body.utf8.count))
        channel.write(HTTPServerResponsePart.head(HTTPResponseHead(version: version, status: .ok, headers: headers)), promise: nil)
        channel.write(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(string: body))), promise: nil)
        channel.writeAndFlush(HTTPServerResponsePart.end(nil), promise: nil)
    }

    /// Answers requests that carry no transport: `open`, `probe`, the endpoint's own page, 426 and 404.
    private func answer(context: ChannelHandlerContext, head: HTTPRequestHead) {
        let path = head.pathWithoutQuery
        if path == self.pathPrefix + "/open" && head.method == .POST {
            guard let kind = HTTPQuery(uri: head.uri)["t"].flatMap(TransportKind.init(rawValue:)),
                kind == .chunked || kind == .polling
            else {
                Self.writeError(channel: context.channel, version: head.version, status: .badRequest, "open needs t=chunked|polling")
                return
            }
            let peer = context.channel.remoteAddress.map(\.displayText) ?? "unknown peer"
            let (registry, onConnection, channel, version) = (self.registry, self.onConnection, context.channel, head.version)
            let placed = CulvertRequestField.placement.value(in: head.headers).flatMap { registry.placement?($0) }
            if let loop = placed, loop !== context.eventLoop {
                // The connection of a resumption is made on its session's loop; the answer waits for it (the
                // pipeline handler holds a pipelined next request until this one is answered).
                loop.submit {
                    let connection = registry.create(kind: kind, eventLoop: loop, peerDescription: peer, peerAddress: channel.remoteAddress)
                    onConnection(connection)
                    return connection.id
                }.whenComplete { result in
                    switch result {
                    case .success(let id):
                        Self.writeOpenAnswer(channel: channel, version: version, id: id)
                    case .failure:
                        Self.writeError(channel: channel, version: version, status: .serviceUnavailable, "the server is shutting down")
                    }
                }
                return
            }
            let connection = registry.create(kind: kind, eventLoop: context.eventLoop, peerDescription: peer, peerAddress: channel.remoteAddress)
            onConnection(connection)
            Self.writeOpenAnswer(channel: channel, version: version, id: connection.id)
        } else if path == self.pathPrefix + "/probe" && head.method == .GET {
            let query = HTTPQuery(uri: head.uri)
            let count = min(max(query["n"].flatMap { Int($0) } ?? 8, 1), 32)
            let interval = TimeAmount.milliseconds(Int64(min(max(query["i"].flatMap { Int($0) } ?? 50, 0), 1000)))
            Self.writeTimedChunks(channel: context.channel, version: head.version, count: count, interval: interval)
        } else if path == self.pathPrefix + "/ws" || path == self.pathPrefix + "/raw" {
            let upgrade = path.hasSuffix("/ws") ? "websocket" : ConnectClientTransport.upgradeProtocol
            Self.writeError(channel: context.channel, version: head.version, status: .upgradeRequired,
                            "this endpoint needs an upgrade to \(upgrade)", extra: [("Upgrade", upgrade)])
        } else if path == self.pathPrefix || path == self.pathPrefix + "/", head.method == .GET || head.method == .HEAD {
            Self.writeEndpointPage(channel: context.channel, head: head)
        } else {
            Self.writeError(channel: context.channel, version: head.version, status: .notFound, "no such endpoint")
        }
    }

    /// The page a browser or `curl` gets at the path prefix itself, so that an operator checking the server sees it
    /// is up and what it is (a HEAD gets the headers only).
    private static func writeEndpointPage(channel: any Channel, head: HTTPRequestHead) {
        let body = """
            culvert \(CulvertVersion.string)
            This is a culvert tunnel endpoint. Connect to it with `culvert client URL` (or check it with `culvert probe URL`).

            """
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
        headers.add(name: "Content-Length", value: String(body.utf8.count))
        headers.add(name: "Cache-Control", value: "no-store")
        channel.write(HTTPServerResponsePart.head(HTTPResponseHead(version: head.version, status: .ok, headers: headers)), promise: nil)
        if head.method == .GET {
            channel.write(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(string: body))), promise: nil)
        }
        channel.writeAndFlush(HTTPServerResponsePart.end(nil), promise: nil)
    }

    /// Sends `count` chunks, `interval` apart, each its index and a newline, then ends the response and closes the
    /// connection (so that no other request waits behind it).
    private static func writeTimedChunks(channel: any Channel, version: HTTPVersion, count: Int, interval: TimeAmount) {
        var headers = HTTPServerTransportConnection.responseHeaders()
        headers.replaceOrAdd(name: "Content-Type", value: "text/plain; charset=utf-8")
        headers.add(name: "Connection", value: "close")
        if version.major == 1 && version.minor >= 1 { headers.add(name: "Transfer-Encoding", value: "chunked") }
        channel.writeAndFlush(HTTPServerResponsePart.head(HTTPResponseHead(version: version, status: .ok, headers: headers)), promise: nil)
        for index in 0..<count {
            channel.eventLoop.scheduleTask(in: interval * Int64(index)) {
                channel.writeAndFlush(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(string: "\(index)\n"))), promise: nil)
                if index == count - 1 {
                    channel.writeAndFlush(HTTPServerResponsePart.end(nil)).whenComplete { _ in channel.close(promise: nil) }
                }
            }
        }
    }

    /// Answers the request with an error and ignores the rest of its body; a request whose body is still coming
    /// is answered with `Connection: close` and its connection closed, rather than read to its end.
    private func respondError(context: ChannelHandlerContext, head: HTTPRequestHead?, status: HTTPResponseStatus, _ message: String) {
        let version: HTTPVersion
        switch (head, self.state) {
        case (let head?, _): version = head.version
        case (nil, .upload(_, let uploadHead, _)): version = uploadHead.version
        default: version = .http1_1
        }
        // Without a head the error comes in the middle of a body.
        let bodyComing = head?.hasBody ?? true
        self.state = .discarding
        self.decoder = nil
        self.textDecoder = nil
        Self.writeError(channel: context.channel, version: version, status: status, message, closeConnection: bodyComing)
    }

    /// Marks the server's own error answers, so that a client tells them from a proxy's refusal (a content rule).
    static let errorHeaderName = "Culvert-Error"

    static func writeError(
        channel: any Channel,
        version: HTTPVersion,
        status: HTTPResponseStatus,
        _ message: String,
        extra: [(String, String)] = [],
        closeConnection: Bool = false
    ) {
        let body = "culvert: \(message)\n"
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
        headers.add(name: "Content-Length", value: String(body.utf8.count))
        headers.add(name: "Cache-Control", value: "no-store")
        headers.add(name: Self.errorHeaderName, value: String(status.code))
        if closeConnection { headers.add(name: "Connection", value: "close") }
        for (name, value) in extra { headers.add(name: name, value: value) }
        channel.write(HTTPServerResponsePart.head(HTTPResponseHead(version: version, status: status, headers: headers)), promise: nil)
        channel.write(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(string: body))), promise: nil)
        let ended = channel.writeAndFlush(HTTPServerResponsePart.end(nil))
        if closeConnection { ended.whenComplete { _ in channel.close(promise: nil) } }
    }
}
