import NIOCore
import NIOHTTP1

/// Serves the HTTP requests that no upgrade took, under the path prefix:
///
/// - `POST <prefix>/open?t=chunked|polling` creates a chunked or polling connection and answers its id;
/// - `GET <prefix>/down?c=ID&m=stream|poll&a=ACK` carries downstream bytes;
/// - `POST <prefix>/up?c=ID` carries upstream records;
/// - `GET <prefix>/probe?n=N&i=MS` answers N small chunks sent MS milliseconds apart, so that the negotiator can
///   see whether the path delivers a streaming response as it is sent;
/// - `<prefix>/ws` or `<prefix>/raw` without `Upgrade` gets 426 (a proxy stripped it), anything else 404,
///   so that a client and the negotiator can tell the cases apart.
final class HTTPTransportRequestHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private enum State {
        case idle
        /// A request whose answer waits for its end.
        case pending(HTTPRequestHead)
        case upload(HTTPServerTransportConnection, HTTPRequestHead)
        case download(HTTPServerTransportConnection)
        /// A request being answered with an error; its body is ignored.
        case discarding
    }

    private let pathPrefix: String
    private let registry: HTTPConnectionRegistry
    private let maximumRecordPayload: Int
    private let maximumPendingRequests: Int
    private let onConnection: @Sendable (any TransportConnection) -> Void
    private var state = State.idle
    /// Called at the end of every request that this handler took: puts an upgrade handler back in front of it, so
    /// that the connection's next request may be an upgrade too.
    var rearmUpgrade: ((ChannelHandlerContext) -> Void)?
    private var decoder: NIOSingleStepByteToMessageProcessor<HTTPTransportRecordDecoder>?

    init(
        pathPrefix: String,
        registry: HTTPConnectionRegistry,
        maximumRecordPayload: Int,
        maximumPendingRequests: Int,
        onConnection: @escaping @Sendable (any TransportConnection) -> Void
    ) {
        self.maximumPendingRequests = maximumPendingRequests
        self.pathPrefix = pathPrefix
        self.registry = registry
        self.maximumRecordPayload = maximumRecordPayload
        self.onConnection = onConnection
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.begin(context: context, head: head)
        case .body(let body):
            guard case .upload(let connection, _) = self.state else { return }
            self.decodeUpload(context: context, connection: connection, body: body)
        case .end:
            self.finish(context: context)
            self.rearmUpgrade?(context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        switch self.state {
        case .download(let connection):
            let channel = context.channel
            connection.eventLoop.execute { connection.downChannelClosed(channel) }
        case .upload(let connection, _):
            connection.pendingUploads.withLockedValue { $0 -= 1 }
            connection.eventLoop.execute { _ = connection.uploadFinished() }
        case .idle, .pending, .discarding:
            break
        }
        self.state = .idle
        context.fireChannelInactive()
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
            self.state = .download(connection)
            let channel = context.channel
            let version = head.version
            connection.eventLoop.execute {
                connection.downRequest(channel: channel, version: version, mode: mode, acknowledged: acknowledged)
            }
        case "up" where head.method == .POST:
            guard let connection = self.lookup(context: context, head: head, query: query) else { return }
            let limit = self.maximumPendingRequests
            guard connection.pendingUploads.withLockedValue({ count in
                guard count < limit else { return false }
                count += 1
                return true
            }) else {
                self.respondError(context: context, head: head, status: .tooManyRequests, "more than \(limit) uploads at once on one connection")
                return
            }
            self.state = .upload(connection, head)
            self.decoder = NIOSingleStepByteToMessageProcessor(
                HTTPTransportRecordDecoder(maximumPayloadLength: self.maximumRecordPayload),
                maximumBufferSize: self.maximumRecordPayload + 64
            )
            connection.eventLoop.execute { connection.uploadStarted() }
        default:
            self.state = .pending(head)
        }
    }

    private func lookup(context: ChannelHandlerContext, head: HTTPRequestHead, query: HTTPQuery) -> HTTPServerTransportConnection? {
        guard let id = query["c"], let connection = self.registry.connection(id: id) else {
            self.respondError(context: context, head: head, status: .notFound, "unknown or expired connection")
            return nil
        }
        return connection
    }

    private func decodeUpload(context: ChannelHandlerContext, connection: HTTPServerTransportConnection, body: ByteBuffer) {
        var records: [HTTPTransportRecord] = []
        do {
            try self.decoder?.process(buffer: body) { records.append($0) }
        } catch {
            connection.pendingUploads.withLockedValue { $0 -= 1 }
            connection.eventLoop.execute { _ = connection.uploadFinished() }
            if case .upload(_, let head) = self.state {
                self.respondError(context: context, head: head, status: .badRequest, "malformed upload: \(error)")
            }
            return
        }
        if !records.isEmpty {
            let decoded = records
            connection.eventLoop.execute { connection.uploadRecords(decoded) }
        }
    }

    private func finish(context: ChannelHandlerContext) {
        switch self.state {
        case .pending(let head):
            self.state = .idle
            self.answer(context: context, head: head)
        case .upload(let connection, let head):
            self.state = .idle
            connection.pendingUploads.withLockedValue { $0 -= 1 }
            let truncated: Bool
            do {
                try self.decoder?.finishProcessing(seenEOF: true) { _ in }
                truncated = false
            } catch {
                truncated = true
            }
            self.decoder = nil
            let channel = context.channel
            connection.eventLoop.execute {
                let acknowledged = connection.uploadFinished()
                if truncated {
                    Self.writeError(channel: channel, version: head.version, status: .badRequest, "the body ended inside a record")
                } else {
                    HTTPServerTransportConnection.respondEmpty(channel: channel, records: [.acknowledge(acknowledged)])
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

    /// Answers requests that carry no transport: `open`, 426 and 404.
    private func answer(context: ChannelHandlerContext, head: HTTPRequestHead) {
        let path = head.pathWithoutQuery
        if path == self.pathPrefix + "/open" && head.method == .POST {
            guard let kind = HTTPQuery(uri: head.uri)["t"].flatMap(TransportKind.init(rawValue:)),
                kind == .chunked || kind == .polling
            else {
                Self.writeError(channel: context.channel, version: head.version, status: .badRequest, "open needs t=chunked|polling")
                return
            }
            let peer = context.channel.remoteAddress.map { "\($0)" } ?? "unknown peer"
            let connection = self.registry.create(
                kind: kind, eventLoop: context.eventLoop, peerDescription: peer, peerAddress: context.channel.remoteAddress
            )
            self.onConnection(connection)
            var headers = HTTPServerTransportConnection.responseHeaders()
            headers.replaceOrAdd(name: "Content-Type", value: "text/plain; charset=utf-8")
            let body = connection.id + "\n"
            headers.add(name: "Content-Length", value: String(body.utf8.count))
            context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .ok, headers: headers))), promise: nil)
            context.write(self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
            context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
        } else if path == self.pathPrefix + "/probe" && head.method == .GET {
            let query = HTTPQuery(uri: head.uri)
            let count = min(max(query["n"].flatMap { Int($0) } ?? 8, 1), 32)
            let interval = TimeAmount.milliseconds(Int64(min(max(query["i"].flatMap { Int($0) } ?? 50, 0), 1000)))
            Self.writeTimedChunks(channel: context.channel, version: head.version, count: count, interval: interval)
        } else if path == self.pathPrefix + "/ws" || path == self.pathPrefix + "/raw" {
            let upgrade = path.hasSuffix("/ws") ? "websocket" : ConnectClientTransport.upgradeProtocol
            Self.writeError(channel: context.channel, version: head.version, status: .upgradeRequired,
                            "this endpoint needs an upgrade to \(upgrade)", extra: [("Upgrade", upgrade)])
        } else {
            Self.writeError(channel: context.channel, version: head.version, status: .notFound, "no such endpoint")
        }
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

    private func respondError(context: ChannelHandlerContext, head: HTTPRequestHead, status: HTTPResponseStatus, _ message: String) {
        self.state = .discarding
        self.decoder = nil
        Self.writeError(channel: context.channel, version: head.version, status: status, message)
    }

    static func writeError(
        channel: any Channel,
        version: HTTPVersion,
        status: HTTPResponseStatus,
        _ message: String,
        extra: [(String, String)] = []
    ) {
        let body = "culvert: \(message)\n"
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
        headers.add(name: "Content-Length", value: String(body.utf8.count))
        headers.add(name: "Cache-Control", value: "no-store")
        for (name, value) in extra { headers.add(name: name, value: value) }
        channel.write(HTTPServerResponsePart.head(HTTPResponseHead(version: version, status: status, headers: headers)), promise: nil)
        channel.write(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(string: body))), promise: nil)
        channel.writeAndFlush(HTTPServerResponsePart.end(nil), promise: nil)
    }
}
