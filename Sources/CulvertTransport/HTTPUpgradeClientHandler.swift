import NIOCore
import NIOHTTP1

/// Sends an HTTP/1.1 upgrade request and, on a valid `101 Switching Protocols`, removes the HTTP codec and lets
/// the transport install its own handlers and ``TransportConnection``. Used by the WebSocket transport (RFC 6455)
/// and the CONNECT transport (`Upgrade: culvert`).
///
/// Any other answer fails `upgradePromise` with the status and a hint, so that the user (and the negotiator)
/// learn what the path in between did to the request.
final class HTTPUpgradeClientHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    /// Checks a 101 answer; returns why it is not acceptable, or nil.
    typealias Validator = (HTTPResponseHead) -> String?
    /// Adds the transport's handlers after the HTTP codec is gone; returns the connection.
    typealias Installer = (ChannelPipeline.SynchronousOperations, any Channel) throws -> any TransportConnection

    private let kind: TransportKind
    private let route: HTTPRoute
    private let request: HTTPRequestHead
    private let validate: Validator
    private let install: Installer
    private let upgradePromise: EventLoopPromise<any TransportConnection>
    private var responseHead: HTTPResponseHead?
    private var requestSent = false
    private var done = false

    init(
        kind: TransportKind,
        route: HTTPRoute,
        request: HTTPRequestHead,
        upgradePromise: EventLoopPromise<any TransportConnection>,
        validate: @escaping Validator,
        install: @escaping Installer
    ) {
        self.kind = kind
        self.route = route
        self.request = request
        self.upgradePromise = upgradePromise
        self.validate = validate
        self.install = install
    }

    func channelActive(context: ChannelHandlerContext) {
        self.sendRequest(context: context)
        context.fireChannelActive()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.sendRequest(context: context) }
    }

    private func sendRequest(context: ChannelHandlerContext) {
        guard !self.requestSent else { return }
        self.requestSent = true
        context.write(self.wrapOutboundOut(.head(self.request)), promise: nil)
        context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.done else { return }
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.responseHead = head
            self.route.cookies?.store(from: head.headers)
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
        self.fail(context: context, .handshakeFailed(self.kind, "the connection closed before the server answered the upgrade\(self.route.endpoint.usesTLS ? "" : " (a server with TLS needs an https:// URL)")"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.fail(context: context, .handshakeFailed(self.kind, "\(error)"))
    }

    private func statusError(_ head: HTTPResponseHead) -> TransportError {
        if let proxyError = self.route.proxyError(for: head, method: "GET with Upgrade") { return proxyError }
        let hint: String
        switch head.status.code {
        case 404: hint = "check the URL path (the server's --path, default /culvert)"
        case 426, 400, 200:
            hint = "the upgrade did not reach the server (a proxy may strip Upgrade); try another --transport"
        case 401, 403: hint = "something in the path refuses the request"
        case 503 where head.headers.contains(name: DrainingRequestFilter.headerName): hint = DrainingRequestFilter.clientHint
        case 502, 503, 504: hint = "a proxy in the path could not reach the culvert server"
        default: hint = "the server or a proxy in the path did not accept the upgrade"
        }
        return .unexpectedStatus(self.kind, status: Int(head.status.code), reason: head.status.reasonPhrase, hint: hint)
    }

    private func upgrade(context: ChannelHandlerContext, head: HTTPResponseHead) {
        if let problem = self.validate(head) {
            self.fail(context: context, .handshakeFailed(self.kind, problem))
            return
        }
        self.done = true
        let pipeline = context.pipeline.syncOperations
        do {
            pipeline.removeHandler(context: context, promise: nil)
            let connection = try self.install(pipeline, context.channel)
            let encoder = try pipeline.handler(type: HTTPRequestEncoder.self)
            pipeline.removeHandler(encoder, promise: nil)
            // The response decoder also watches outbound writes: the session may write only once it is gone.
            let decoder = try pipeline.handler(type: ByteToMessageHandler<HTTPResponseDecoder>.self)
            let decoderRemoved = context.eventLoop.makePromise(of: Void.self)
            pipeline.removeHandler(decoder, promise: decoderRemoved)
            let upgradePromise = self.upgradePromise
            decoderRemoved.futureResult.assumeIsolated().whenComplete { _ in upgradePromise.assumeIsolated().succeed(connection) }
        } catch {
            self.upgradePromise.fail(TransportError.handshakeFailed(self.kind, "pipeline change failed: \(error)"))
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
