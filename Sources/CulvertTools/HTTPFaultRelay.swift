import NIOCore
import NIOHTTP1
import NIOPosix

/// Relays HTTP requests, message by message, from a client connection to an upstream connection and their responses
/// back, for ``FaultProxy``: the place for the faults that real proxies have at the HTTP level — responses held
/// until they end or passed on in bursts, request bodies held and re-framed with a Content-Length, bodies over a
/// limit answered 413, slow bodies cut, idle connections cut with a 504, content rules (a 403 for a request or a
/// block page for a response of a refused type, replies over a size limit refused or cut). Hop-by-hop headers (`Connection`,
/// `Upgrade`, `Proxy-*`) are not passed on; each side keeps its own keep-alive.
final class HTTPFaultRelay: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    /// The handlers that go before this one on the client's connection.
    static func serverSideHandlers() -> [any ChannelHandler] {
        [HTTPResponseEncoder(), ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes))]
    }

    private let settings: FaultProxySettings
    private var context: ChannelHandlerContext?

    private var upstream: (any Channel)?
    private var upstreamDestination: (host: String, port: Int)?
    /// Request parts waiting for the upstream connection.
    private var pendingToUpstream: [HTTPClientRequestPart] = []
    private var upstreamConnecting = false

    /// The request being received, with what its handling needs.
    private var requestVersion = HTTPVersion.http1_1
    private var clientKeepAlive = true
    private var requestBodyBytes = 0
    /// A request held whole until its end (`bufferRequestBodies`).
    private var heldRequest: (head: HTTPRequestHead, body: ByteBuffer)?
    private var slowBodyCut: Scheduled<Void>?
    private var closing = false

    /// Whether a response is owed to the client, and whether its head has come from upstream.
    private var awaitingResponse = false
    private var responseStarted = false
    private var responseKeepAlive = true
    /// Response parts held back (`bufferResponses`, `burstResponses`).
    private var heldResponse: [HTTPServerResponsePart] = []
    private var burstTimer: Scheduled<Void>?
    /// Response bytes relayed on this connection, for `cutAfterBytes`.
    private var relayedBytes = 0
    /// Body bytes of the current response, for `limitResponseBodies`.
    private var responseBodyBytes = 0

    init(settings: FaultProxySettings) {
        self.settings = settings
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    // MARK: Requests

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.closing else { return }
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.requestStarted(context: context, head: head)
        case .body(let body):
            self.requestBodyBytes += body.readableBytes
            if let limit = self.settings.requestBodyLimit, self.requestBodyBytes > limit {
                self.refuse(context: context, "413 Content Too Large")
                return
            }
            if self.heldRequest != nil {
                var body = body
                self.heldRequest!.body.writeBuffer(&body)
            } else {
                self.sendUpstream(.body(.byteBuffer(body)), flush: true)
            }
        case .end:
            self.slowBodyCut?.cancel()
            self.slowBodyCut = nil
            if var held = self.heldRequest {
                self.heldRequest = nil
                held.head.headers.remove(name: "Transfer-Encoding")
                held.head.headers.replaceOrAdd(name: "Content-Length", value: String(held.body.readableBytes))
                self.sendUpstream(.head(held.head), flush: false)
                if held.body.readableBytes > 0 { self.sendUpstream(.body(.byteBuffer(held.body)), flush: false) }
            }
            self.sendUpstream(.end(nil), flush: true)
        }
    }

    private func requestStarted(context: ChannelHandlerContext, head: HTTPRequestHead) {
        if let expected = self.settings.expectedAuthorization, head.headers["Proxy-Authorization"].first != expected {
            self.refuse(context: context, "407 Proxy Authentication Required",
                        extra: [("Proxy-Authenticate", "Basic realm=\"culvert-test\"")])
            return
        }
        guard head.method != .CONNECT, let destination = self.settings.destination(of: head.uri, isConnect: false) else {
            self.refuse(context: context, "400 Bad Request")
            return
        }
        if let type = FaultProxySettings.mediaType(head.headers["Content-Type"].first), self.settings.refusedRequestTypes.contains(type) {
            self.refuse(context: context, "403 Forbidden", page: "uploads of \(type) are not allowed by policy")
            return
        }
        let declaredLength = head.headers["Content-Length"].first.flatMap { Int($0) }
        if let limit = self.settings.requestBodyLimit, let declaredLength, declaredLength > limit {
            self.refuse(context: context, "413 Content Too Large")
            return
        }
        self.requestVersion = head.version
        self.clientKeepAlive = head.isKeepAlive
        self.requestBodyBytes = 0
        self.awaitingResponse = true
        self.responseStarted = false
        var upstreamHead = HTTPRequestHead(version: head.version, method: head.method, uri: destination.path)
        for (name, value) in head.headers where !Self.isHopByHop(name) { upstreamHead.headers.add(name: name, value: value) }
        let hasBody = (declaredLength ?? 0) > 0
            || head.headers["Transfer-Encoding"].contains { $0.lowercased().contains("chunked") }
        if hasBody, let after = self.settings.slowBodyLimit {
            self.slowBodyCut = context.eventLoop.assumeIsolated().scheduleTask(in: after) { [self] in
                self.slowBodyCut = nil
                self.closeBoth()
            }
        }
        self.connectUpstream(to: destination)
        if hasBody && self.settings.has(.bufferRequestBodies) {
            self.heldRequest = (upstreamHead, ByteBuffer())
        } else {
            self.sendUpstream(.head(upstreamHead), flush: true)
        }
    }

    private static func isHopByHop(_ name: String) -> Bool {
        let lower = name.lowercased()
        return lower == "connection" || lower == "keep-alive" || lower == "upgrade" || lower.hasPrefix("proxy-")
            || lower == "te" || lower == "trailer"
    }

    /// Answers `status` itself and closes both connections; with `page`, the body is an HTML block page saying it,
    /// as content filters send.
    private func refuse(context: ChannelHandlerContext, _ status: String, page: String? = nil, extra: [(String, String)] = []) {
        guard !self.closing else { return }
        self.closing = true
        let code = Int(status.prefix(3))!
        let body = page.map { "<html><body><h1>Access denied</h1><p>test proxy: \($0)</p></body></html>\n" } ?? "test proxy: \(status)\n"
        var headers = HTTPHeaders([("Content-Length", String(body.utf8.count)), ("Connection", "close")])
        if page != nil { headers.add(name: "Content-Type", value: "text/html") }
        for (name, value) in extra { headers.add(name: name, value: value) }
        let head = HTTPResponseHead(version: self.requestVersion, status: HTTPResponseStatus(statusCode: code), headers: headers)
        context.write(self.wrapOutboundOut(.head(head)), promise: nil)
        context.write(self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
        context.writeAndFlush(self.wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
        self.upstream?.close(promise: nil)
    }

    private func closeBoth() {
        self.closing = true
        self.burstTimer?.cancel()
        self.upstream?.close(promise: nil)
        self.context?.close(promise: nil)
    }

    // MARK: Upstream connection

    private func connectUpstream(to destination: (host: String, port: Int, path: String)) {
        if let current = self.upstreamDestination, current.host == destination.host && current.port == destination.port,
            self.upstreamConnecting || self.upstream?.isActive == true
        {
            return
        }
        self.upstream?.close(promise: nil)
        self.upstream = nil
        self.upstreamDestination = (destination.host, destination.port)
        self.upstreamConnecting = true
        guard let context = self.context else { return }
        let latency = self.settings.latency
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        ClientBootstrap(group: context.eventLoop)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let pipeline = channel.pipeline.syncOperations
                    if let latency { try pipeline.addHandler(DelayedWriteHandler(delay: latency)) }
                    try pipeline.addHandlers([
                        HTTPRequestEncoder(),
                        ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes)),
                        HTTPFaultRelayUpstream(relay: loopBound.value),
                    ])
                }
            }
            .connect(host: destination.host, port: destination.port)
            .whenComplete { result in
                let relay = loopBound.value
                relay.upstreamConnecting = false
                switch result {
                case .failure:
                    if let context = relay.context { relay.refuse(context: context, "502 Bad Gateway") }
                case .success(let channel):
                    guard !relay.closing else {
                        channel.close(promise: nil)
                        return
                    }
                    relay.upstream = channel
                    for part in relay.pendingToUpstream { channel.write(part, promise: nil) }
                    relay.pendingToUpstream.removeAll()
                    channel.flush()
                }
            }
    }

    private func sendUpstream(_ part: HTTPClientRequestPart, flush: Bool) {
        guard let upstream = self.upstream, !self.upstreamConnecting else {
            self.pendingToUpstream.append(part)
            return
        }
        upstream.write(part, promise: nil)
        if flush { upstream.flush() }
        if !upstream.isWritable { self.context?.channel.setOption(.autoRead, value: false).whenComplete { _ in } }
    }

    func upstreamWritabilityChanged(_ writable: Bool) {
        if writable { self.context?.channel.setOption(.autoRead, value: true).whenComplete { _ in } }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.upstream?.setOption(.autoRead, value: context.channel.isWritable).whenComplete { _ in }
        context.fireChannelWritabilityChanged()
    }

    // MARK: Responses

    func upstreamResponded(_ part: HTTPClientResponsePart) {
        guard let context = self.context, !self.closing else { return }
        switch part {
        case .head(let head):
            self.responseBodyBytes = 0
            if let type = FaultProxySettings.mediaType(head.headers["Content-Type"].first), self.settings.refusedResponseTypes.contains(type) {
                self.refuse(context: context, "403 Forbidden", page: "downloads of \(type) are not allowed by policy")
                return
            }
            if let limit = self.settings.responseBodyLimit, let length = head.headers["Content-Length"].first.flatMap({ Int($0) }),
                length > limit
            {
                self.refuse(context: context, "403 Forbidden", page: "replies over \(limit) bytes are not allowed by policy")
                return
            }
            self.responseStarted = true
            self.responseKeepAlive = head.isKeepAlive && self.clientKeepAlive
            var clientHead = HTTPResponseHead(version: self.requestVersion, status: head.status)
            for (name, value) in head.headers where !Self.isHopByHop(name) { clientHead.headers.add(name: name, value: value) }
            if !self.responseKeepAlive { clientHead.headers.add(name: "Connection", value: "close") }
            self.respond(context: context, .head(clientHead))
        case .body(let body):
            self.relayedBytes += body.readableBytes
            self.responseBodyBytes += body.readableBytes
            if let limit = self.settings.responseBodyLimit, self.responseBodyBytes > limit {
                self.closeBoth()  // a reply that grew past the limit is cut where it stands
                return
            }
            self.respond(context: context, .body(.byteBuffer(body)))
            if let cut = self.settings.cutAfterBytes, self.relayedBytes >= cut {
                context.flush()
                self.closeBoth()
            }
        case .end:
            self.awaitingResponse = false
            self.respond(context: context, .end(nil))
            if !self.responseKeepAlive {
                self.closing = true
                context.close(promise: nil)
                self.upstream?.close(promise: nil)
            }
        }
    }

    /// Passes a response part on now, or holds it as the faults say.
    private func respond(context: ChannelHandlerContext, _ part: HTTPServerResponsePart) {
        let ended: Bool
        if case .end = part { ended = true } else { ended = false }
        if self.settings.has(.bufferResponses) {
            self.heldResponse.append(part)
            guard ended else { return }
            // Whole now: re-framed with its length, as buffering proxies send it.
            var length = 0
            for case .body(.byteBuffer(let body)) in self.heldResponse { length += body.readableBytes }
            for held in self.heldResponse {
                if case .head(var head) = held {
                    head.headers.remove(name: "Transfer-Encoding")
                    head.headers.replaceOrAdd(name: "Content-Length", value: String(length))
                    context.write(self.wrapOutboundOut(.head(head)), promise: nil)
                } else {
                    context.write(self.wrapOutboundOut(held), promise: nil)
                }
            }
            self.heldResponse.removeAll()
            context.flush()
        } else if let interval = self.settings.burstInterval {
            self.heldResponse.append(part)
            if ended {
                self.releaseHeldResponse(context: context)
                self.burstTimer?.cancel()
                self.burstTimer = nil
            } else if self.burstTimer == nil {
                self.scheduleBurst(context: context, interval: interval)
            }
        } else {
            context.writeAndFlush(self.wrapOutboundOut(part), promise: nil)
        }
        if !context.channel.isWritable { self.upstream?.setOption(.autoRead, value: false).whenComplete { _ in } }
    }

    /// Releases what is held every `interval` while a response is in progress.
    private func scheduleBurst(context: ChannelHandlerContext, interval: TimeAmount) {
        self.burstTimer = context.eventLoop.assumeIsolated().scheduleTask(in: interval) { [self] in
            self.burstTimer = nil
            guard let context = self.context, !self.closing else { return }
            self.releaseHeldResponse(context: context)
            if self.awaitingResponse { self.scheduleBurst(context: context, interval: interval) }
        }
    }

    private func releaseHeldResponse(context: ChannelHandlerContext) {
        guard !self.heldResponse.isEmpty else { return }
        for part in self.heldResponse { context.write(self.wrapOutboundOut(part), promise: nil) }
        self.heldResponse.removeAll()
        context.flush()
    }

    func upstreamClosed() {
        self.upstream = nil
        self.upstreamDestination = nil
        guard let context = self.context, !self.closing else { return }
        if self.awaitingResponse && !self.responseStarted {
            self.refuse(context: context, "502 Bad Gateway")
        } else if self.awaitingResponse {
            self.closeBoth()  // the response was cut short: so is the client's connection
        }
    }

    // MARK: Client connection events

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            if self.awaitingResponse && !self.responseStarted {
                self.refuse(context: context, "504 Gateway Timeout")
            } else {
                self.closeBoth()
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.closing = true
        self.slowBodyCut?.cancel()
        self.burstTimer?.cancel()
        self.upstream?.close(promise: nil)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.refuse(context: context, "400 Bad Request")
    }
}

/// The upstream end of an ``HTTPFaultRelay``: passes responses and connection events to it.
private final class HTTPFaultRelayUpstream: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    private var relay: HTTPFaultRelay?

    init(relay: HTTPFaultRelay) {
        self.relay = relay
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.relay?.upstreamResponded(self.unwrapInboundIn(data))
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.relay?.upstreamWritabilityChanged(context.channel.isWritable)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.relay?.upstreamClosed()
        self.relay = nil
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
