import NIOCore
import NIOHTTP1

/// Asks a proxy what credentials it wants before the first request that matters: the same kind of request the
/// transport is about to make (`CONNECT` for a tunnel, an absolute-form `HEAD` of the endpoint page otherwise), with
/// no credentials, on a connection of its own that is closed after the answer. The answer's challenge (or its
/// absence) goes to the ``ProxyAuthenticator``, whose credentials every later request then carries.
///
/// Its own connection because some proxies (tinyproxy) close the connection after a 407, so the request cannot be
/// sent again on it. Asked only while the scheme is unknown: at a client's start (once per transport that dials
/// then, as the negotiator's probes do), never per request.
enum ProxyChallengePreflight {
    static func run(
        route: HTTPRoute, authenticator: ProxyAuthenticator, tunnel: Bool, on eventLoop: any EventLoop, timeout: TimeAmount
    ) -> EventLoopFuture<Void> {
        let answered = eventLoop.makePromise(of: Void.self)
        let head: HTTPRequestHead
        if tunnel {
            let authority = route.endpoint.authority
            head = HTTPRequestHead(version: .http1_1, method: .CONNECT, uri: authority, headers: ["Host": authority])
        } else {
            var headers = route.baseHeaders()
            headers.replaceOrAdd(name: "Connection", value: "close")
            head = HTTPRequestHead(version: .http1_1, method: .HEAD, uri: route.requestTarget(""), headers: headers)
        }
        // Any failure only means the question went unanswered: the real request, sent next, says what is wrong.
        let asker = NIOLoopBoundBox.makeBoxSendingValue(
            Asker(request: head, authenticator: authenticator, answered: answered), eventLoop: eventLoop
        )
        TransportDialer.connect(
            host: route.dialHost, port: route.dialPort, on: eventLoop, timeout: timeout, sourceAddress: route.sourceAddress
        ) { channel in
            try channel.pipeline.syncOperations.addHandlers([
                HTTPRequestEncoder(), ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes)), asker.value,
            ])
        }
        .whenComplete { result in
            switch result {
            case .failure:
                asker.value.finish()
            case .success(let channel):
                let timer = eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
                answered.futureResult.whenComplete { _ in timer.cancel() }
            }
        }
        return answered.futureResult
    }

    /// Sends the request when the connection is up; reads the answer's head into the authenticator.
    private final class Asker: ChannelInboundHandler {
        typealias InboundIn = HTTPClientResponsePart
        typealias OutboundOut = HTTPClientRequestPart

        private let request: HTTPRequestHead
        private let authenticator: ProxyAuthenticator
        private let answered: EventLoopPromise<Void>
        private var finished = false

        init(request: HTTPRequestHead, authenticator: ProxyAuthenticator, answered: EventLoopPromise<Void>) {
            self.request = request
            self.authenticator = authenticator
            self.answered = answered
        }

        func handlerAdded(context: ChannelHandlerContext) {
            if context.channel.isActive { self.send(context: context) }
        }

        func channelActive(context: ChannelHandlerContext) {
            self.send(context: context)
            context.fireChannelActive()
        }

        private var sent = false

        private func send(context: ChannelHandlerContext) {
            guard !self.sent else { return }
            self.sent = true
            context.write(self.wrapOutboundOut(.head(self.request)), promise: nil)
            context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard case .head(let head) = self.unwrapInboundIn(data) else { return }
            if head.status == .proxyAuthenticationRequired {
                self.authenticator.challenged(ProxyChallenge.parse(head.headers["Proxy-Authenticate"]), sent: nil)
            } else {
                self.authenticator.proxyAskedForNothing()
            }
            self.finish()
            context.close(promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            self.finish()
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            self.finish()
            context.close(promise: nil)
        }

        /// Completes the question (once), answered or not.
        func finish() {
            guard !self.finished else { return }
            self.finished = true
            self.answered.succeed()
        }
    }
}
