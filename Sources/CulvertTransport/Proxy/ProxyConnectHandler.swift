import NIOCore
import NIOHTTP1

/// Opens a CONNECT tunnel through a forward proxy (RFC 9110 §9.3.6): sends `CONNECT host:port`, and on a 2xx
/// removes itself and the HTTP codec, so that the channel carries the tunnel's raw bytes.
///
/// NIOExtras' `NIOHTTP1ProxyConnectHandler` does the same, but drops the proxy's answer on failure and knows no
/// proxy authentication; this one answers a 407 it can satisfy (a Digest nonce gone stale, a first challenge) by
/// sending CONNECT again on the same connection, and otherwise keeps the status and the `Proxy-Authenticate` scheme
/// to tell the user what the proxy wants.
final class ProxyConnectHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    private let route: HTTPRoute
    private let proxy: ProxyConfiguration
    private let promise: EventLoopPromise<Void>
    private var head: HTTPResponseHead?
    private var requestSent = false
    private var done = false
    /// The `Proxy-Authorization` the last CONNECT carried.
    private var sentAuthorization: String?
    /// A 407 is being read to its end, after which CONNECT goes again with new credentials.
    private var answeringChallenge = false
    private var attempts = 0
    /// NTLM's last message, for the next CONNECT, once the proxy's CHALLENGE has come.
    private var nextAuthorization: String?

    init(route: HTTPRoute, proxy: ProxyConfiguration, promise: EventLoopPromise<Void>) {
        self.route = route
        self.proxy = proxy
        self.promise = promise
    }

    /// The HTTP codec and this handler, to add to a fresh channel to the proxy.
    static func handlers(route: HTTPRoute, proxy: ProxyConfiguration, promise: EventLoopPromise<Void>) -> [any ChannelHandler] {
        [
            HTTPRequestEncoder(),
            ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .forwardBytes)),
            ProxyConnectHandler(route: route, proxy: proxy, promise: promise),
        ]
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.sendRequest(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.sendRequest(context: context)
        context.fireChannelActive()
    }

    private func sendRequest(context: ChannelHandlerContext) {
        guard !self.requestSent else { return }
        self.requestSent = true
        self.attempts += 1
        let authority = self.route.endpoint.authority
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: authority)
        headers.add(name: "User-Agent", value: "culvert/\(CulvertVersion.string)")
        if let next = self.nextAuthorization {
            self.sentAuthorization = next
            self.nextAuthorization = nil
        } else if let authenticator = self.proxy.authenticator, authenticator.isConnectionBased {
            self.sentAuthorization = authenticator.ntlmNegotiation()
        } else {
            self.sentAuthorization = self.proxy.authenticator?.authorization(method: "CONNECT", uri: authority)
        }
        if let authorization = self.sentAuthorization {
            headers.add(name: "Proxy-Authorization", value: authorization)
        }
        let head = HTTPRequestHead(version: .http1_1, method: .CONNECT, uri: authority, headers: headers)
        context.write(self.wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.done else { return }
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            if head.status == .proxyAuthenticationRequired, self.attempts < 3, let authenticator = self.proxy.authenticator,
                head.isKeepAlive
            {
                let challenges = ProxyChallenge.parse(head.headers["Proxy-Authenticate"])
                if self.sentAuthorization == authenticator.ntlmNegotiation(),
                    let answer = authenticator.ntlmAuthentication(answering: challenges)
                {
                    // NTLM's CHALLENGE: the AUTHENTICATE goes on this connection, which it authenticates.
                    self.nextAuthorization = answer
                    self.answeringChallenge = true
                    return
                }
                if authenticator.challenged(challenges, sent: self.sentAuthorization) {
                    self.answeringChallenge = true
                    return
                }
            }
            if (200..<300).contains(head.status.code) { self.proxy.authenticator?.proxyAskedForNothing() }
            if !(200..<300).contains(head.status.code) {
                self.fail(
                    context: context,
                    HTTPRoute.proxyError(for: head, proxy: self.proxy, method: "CONNECT")
                        ?? .proxyStatus(proxy: self.proxy.description, status: Int(head.status.code),
                                        reason: head.status.reasonPhrase)
                )
            }
        case .body:
            break
        case .end where self.answeringChallenge:
            self.answeringChallenge = false
            self.head = nil
            self.requestSent = false
            self.sendRequest(context: context)
        case .end:
            guard self.head != nil else { return }
            self.done = true
            let pipeline = context.pipeline.syncOperations
            if let encoder = try? pipeline.handler(type: HTTPRequestEncoder.self) {
                pipeline.removeHandler(encoder, promise: nil)
            }
            // The response decoder also watches outbound writes: what comes next may be written only once it is
            // really gone (its removal can take a tick).
            let decoderRemoved = context.eventLoop.makePromise(of: Void.self)
            if let decoder = try? pipeline.handler(type: ByteToMessageHandler<HTTPResponseDecoder>.self) {
                pipeline.removeHandler(decoder, promise: decoderRemoved)
            } else {
                decoderRemoved.succeed()
            }
            pipeline.removeHandler(context: context, promise: nil)
            decoderRemoved.futureResult.cascade(to: self.promise)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.fail(context: context, .proxyFailed(proxy: self.proxy.description,
                                                 reason: "closed the connection before answering CONNECT"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.fail(context: context, .proxyFailed(proxy: self.proxy.description, reason: "sent an invalid answer to CONNECT (\(error))"))
    }

    private func fail(context: ChannelHandlerContext, _ error: TransportError) {
        guard !self.done else { return }
        self.done = true
        self.promise.fail(error)
        context.close(promise: nil)
    }
}
