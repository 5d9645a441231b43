import NIOCore
import NIOHTTP1
import NIOWebSocket

/// Sends the RFC 6455 opening handshake and, on a valid `101 Switching Protocols`, swaps the HTTP codec for the
/// WebSocket codec and a ``ChannelTransportConnection``.
///
/// Any other answer fails `upgradePromise` with the status and a hint, so that the user (and the negotiator) learn
/// what the path in between did to the request.
final class WebSocketClientUpgradeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    private let endpoint: ServerEndpoint
    private let options: TransportOptions
    private let upgradePromise: EventLoopPromise<any TransportConnection>
    private let requestKey: String
    private var responseHead: HTTPResponseHead?
    private var done = false

    init(endpoint: ServerEndpoint, options: TransportOptions, upgradePromise: EventLoopPromise<any TransportConnection>) {
        self.endpoint = endpoint
        self.options = options
        self.upgradePromise = upgradePromise
        let keyBytes = (0..<16).map { _ in UInt8.random(in: 0...255) }
        self.requestKey = Base64.encode(keyBytes)
    }

    func channelActive(context: ChannelHandlerContext) {
        self.sendRequest(context: context)
        context.fireChannelActive()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.sendRequest(context: context) }
    }

    private var requestSent = false

    private func sendRequest(context: ChannelHandlerContext) {
        guard !self.requestSent else { return }
        self.requestSent = true
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: self.endpoint.hostHeader)
        headers.add(name: "Upgrade", value: "websocket")
        headers.add(name: "Connection", value: "Upgrade")
        headers.add(name: "Sec-WebSocket-Key", value: self.requestKey)
        headers.add(name: "Sec-WebSocket-Version", value: "13")
        headers.add(name: "Cache-Control", value: "no-store")
        headers.add(name: "User-Agent", value: "culvert/\(CulvertVersion.string)")
        for (name, value) in self.options.extraHeaders { headers.add(name: name, value: value) }
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: self.endpoint.path("ws"), headers: headers)
        context.write(self.wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.done else { return }
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.responseHead = head
            if head.status != .switchingProtocols {
                self.fail(context: context, self.statusError(head))
            }
        case .body:
            break
        case .end:
            guard let head = self.responseHead else { return }
            self.upgrade(context: context, head: head)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.fail(
            context: context,
            .handshakeFailed(.websocket, "the connection closed before the server answered the upgrade")
        )
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.fail(context: context, .handshakeFailed(.websocket, "\(error)"))
    }

    private func statusError(_ head: HTTPResponseHead) -> TransportError {
        let hint: String
        switch head.status.code {
        case 404: hint = "check the URL path (the server's --path, default /culvert)"
        case 426, 400, 200:
            hint = "the WebSocket upgrade did not reach the server (a proxy may strip Upgrade); try another --transport"
        case 401, 403: hint = "something in the path refuses the request"
        case 502, 503, 504: hint = "a proxy in the path could not reach the culvert server"
        default: hint = "the server or a proxy in the path did not accept the WebSocket upgrade"
        }
        return .unexpectedStatus(.websocket, status: Int(head.status.code), reason: head.status.reasonPhrase, hint: hint)
    }

    private func upgrade(context: ChannelHandlerContext, head: HTTPResponseHead) {
        let upgradeHeader = head.headers.first(name: "Upgrade")?.lowercased()
        guard upgradeHeader == "websocket" else {
            self.fail(context: context, .handshakeFailed(.websocket, "101 response without 'Upgrade: websocket'"))
            return
        }
        let expectedAccept = WebSocketAccept.value(forKey: self.requestKey)
        guard head.headers.first(name: "Sec-WebSocket-Accept") == expectedAccept else {
            self.fail(context: context, .handshakeFailed(.websocket, "Sec-WebSocket-Accept does not match the key"))
            return
        }
        self.done = true
        let pipeline = context.pipeline.syncOperations
        let connection = ChannelTransportConnection(kind: .websocket, channel: context.channel)
        do {
            pipeline.removeHandler(context: context, promise: nil)
            try pipeline.addHandlers([
                ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: self.options.maximumMessageSize)),
                WebSocketMessageHandler(isClient: true),
                connection,
            ])
            let encoder = try pipeline.handler(type: HTTPRequestEncoder.self)
            pipeline.removeHandler(encoder, promise: nil)
            let decoder = try pipeline.handler(type: ByteToMessageHandler<HTTPResponseDecoder>.self)
            pipeline.removeHandler(decoder, promise: nil)
            self.upgradePromise.succeed(connection)
        } catch {
            self.upgradePromise.fail(TransportError.handshakeFailed(.websocket, "pipeline change failed: \(error)"))
            context.close(promise: nil)
        }
    }

    private func fail(context: ChannelHandlerContext, _ error: TransportError) {
        guard !self.done else { return }
        self.done = true
        self.upgradePromise.fail(error)
        context.close(promise: nil)
    }
}
