import NIOCore
import NIOHTTP1

/// One keep-alive HTTP/1.1 connection to the server (or the proxy), carrying one request at a time, for the
/// chunked and polling transports. Confined to its event loop: not `Sendable`; ``dial(route:on:timeout:)`` hands it
/// over bound to that loop.
final class HTTPClientChannel {
    enum Event {
        case head(HTTPResponseHead)
        case body(ByteBuffer)
        case end
        case failed(any Error)
    }

    let channel: any Channel
    private var onEvent: ((Event) -> Void)?
    private var reusable = true
    private(set) var isClosed = false
    /// Requests sent on this connection so far: a failure of the second or later before any answer means the
    /// other end had closed the idle connection (many proxies close after each response without saying so).
    private(set) var requestsSent = 0
    /// Whether the current request has had its response head.
    private(set) var responseStarted = false

    /// Whether a failure of the current request means only that the idle connection had been closed.
    var failedAsStaleConnection: Bool { self.requestsSent > 1 && !self.responseStarted }
    /// Whether the current request failed only because the proxy asked for new credentials, which the request
    /// carries when sent again on a new connection (``ProxyAuthenticationHandler``).
    fileprivate(set) var failedForNewProxyCredentials = false

    /// Whether a new request can go out on this connection now.
    var isIdle: Bool { self.onEvent == nil && self.reusable && !self.isClosed }

    /// The session's cookies, kept from every response head.
    private let cookies: SessionCookieJar?

    private init(channel: any Channel, cookies: SessionCookieJar?) {
        self.channel = channel
        self.cookies = cookies
    }

    /// Opens a connection along `route` (to the proxy when there is one; inside TLS for `https`). The connection
    /// lives on `eventLoop`, so the future's callbacks (which run there) take it out of its loop-bound box.
    static func dial(
        route: HTTPRoute, on eventLoop: any EventLoop, timeout: TimeAmount
    ) -> EventLoopFuture<NIOLoopBound<HTTPClientChannel>> {
        ServerPathDialer.open(route: route, connectTunnel: false, on: eventLoop, timeout: timeout).flatMapThrowing { channel in
            let relay = HTTPClientResponseRelay()
            try channel.pipeline.syncOperations.addHandlers(
                [HTTPRequestEncoder(), ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes))]
                    + route.proxyAuthentication() + [relay]
            )
            let client = HTTPClientChannel(channel: channel, cookies: route.cookies)
            relay.owner = client
            if !channel.isActive { client.isClosed = true }
            return NIOLoopBound(client, eventLoop: channel.eventLoop)
        }
    }

    /// Sends a request head (and, with `body`, a complete body); `onEvent` gets the response.
    func send(_ head: HTTPRequestHead, body: ByteBuffer?, end: Bool, onEvent: @escaping (Event) -> Void) {
        precondition(self.onEvent == nil, "one request at a time")
        self.onEvent = onEvent
        self.requestsSent += 1
        self.responseStarted = false
        self.channel.write(HTTPClientRequestPart.head(head), promise: nil)
        if let body, body.readableBytes > 0 { self.channel.write(HTTPClientRequestPart.body(.byteBuffer(body)), promise: nil) }
        if end {
            self.channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        } else {
            self.channel.flush()
        }
    }

    /// More of a streaming request body (not flushed).
    func writeBody(_ buffer: ByteBuffer) {
        self.channel.write(HTTPClientRequestPart.body(.byteBuffer(buffer)), promise: nil)
    }

    func flush() {
        self.channel.flush()
    }

    /// Ends a streaming request body.
    func endBody() {
        self.channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
    }

    /// Closes the connection; a request in flight gets no more events.
    func close() {
        self.onEvent = nil
        self.isClosed = true
        self.channel.close(promise: nil)
    }

    fileprivate func deliver(_ part: HTTPClientResponsePart) {
        guard let onEvent = self.onEvent else { return }
        switch part {
        case .head(let head):
            self.responseStarted = true
            self.cookies?.store(from: head.headers)
            if !head.isKeepAlive { self.reusable = false }
            onEvent(.head(head))
        case .body(let body):
            onEvent(.body(body))
        case .end:
            self.onEvent = nil
            if !self.reusable { self.close() }
            onEvent(.end)
        }
    }

    fileprivate func fail(_ error: any Error) {
        self.isClosed = true
        guard let onEvent = self.onEvent else { return }
        self.onEvent = nil
        onEvent(.failed(error))
    }
}

/// Passes response parts to the ``HTTPClientChannel`` that owns the connection.
private final class HTTPClientResponseRelay: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    var owner: HTTPClientChannel?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.owner?.deliver(self.unwrapInboundIn(data))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is ProxyAuthenticationHandler.NewCredentialsNeedANewConnection { self.owner?.failedForNewProxyCredentials = true }
        self.owner?.fail(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.owner?.fail(TransportError.protocolViolation("the server or proxy closed the HTTP connection mid-request"))
        self.owner = nil
        context.fireChannelInactive()
    }
}
