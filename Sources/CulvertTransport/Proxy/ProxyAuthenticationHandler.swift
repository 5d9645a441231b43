import NIOCore
import NIOHTTP1

/// On a connection that sends absolute-form requests to a forward proxy: puts the ``ProxyAuthenticator``'s
/// `Proxy-Authorization` on every request head (Digest's differs per request), and answers a 407 that new
/// credentials can satisfy — a Digest nonce gone stale (squid's expire every 50 uses), a first challenge — unseen by
/// the transport above: a request without a body is sent again on the same connection; one with a body is not
/// (squid, having refused it before reading its body, then never reads the next request on that connection: curl
/// sends no body until authentication is settled for the same reason), so the connection fails with
/// ``NewCredentialsNeedANewConnection`` and the transport sends the request again at once on a new one. A 407 it
/// cannot satisfy goes up as it came. One request at a time, as ``HTTPClientChannel`` sends them; after a 101 it
/// leaves the pipeline with the HTTP codec.
final class ProxyAuthenticationHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias InboundOut = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    /// The proxy asked for credentials that the next request will carry; send this one again on a new connection.
    struct NewCredentialsNeedANewConnection: Error, CustomStringConvertible {
        var description: String { "the proxy asked for new credentials (a stale Digest nonce); sending the request again" }
    }

    /// Sends of one request at most: the first, one for a first challenge, one for a stale nonce.
    static let maximumSends = 3

    private struct Request {
        var head: HTTPRequestHead
        var hasBody = false
        var ended = false
        var sends = 1
    }

    private let authenticator: ProxyAuthenticator
    /// The request whose response has not begun.
    private var request: Request?
    /// A 407 is being read to its end; then the request goes again.
    private var answeringChallenge = false

    init(authenticator: ProxyAuthenticator) {
        self.authenticator = authenticator
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch self.unwrapOutboundIn(data) {
        case .head(var head):
            self.authorize(&head)
            self.request = Request(head: head)
            context.write(self.wrapOutboundOut(.head(head)), promise: promise)
            return
        case .body(let body):
            if body.readableBytes > 0 { self.request?.hasBody = true }
        case .end:
            self.request?.ended = true
        }
        context.write(data, promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = self.unwrapInboundIn(data)
        switch part {
        case .head(let head):
            if head.status == .proxyAuthenticationRequired, head.isKeepAlive, let request = self.request, request.ended,
                request.sends < Self.maximumSends,
                self.authenticator.challenged(
                    ProxyChallenge.parse(head.headers["Proxy-Authenticate"]), sent: request.head.headers.first(name: "Proxy-Authorization")
                )
            {
                self.answeringChallenge = true
                return
            }
            if head.status != .proxyAuthenticationRequired { self.authenticator.proxyAskedForNothing() }
            self.request = nil
            context.fireChannelRead(data)
            if head.status == .switchingProtocols {
                context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            }
        case .body where self.answeringChallenge:
            break
        case .end where self.answeringChallenge:
            self.answeringChallenge = false
            self.sendAgain(context: context)
        case .body, .end:
            context.fireChannelRead(data)
        }
    }

    /// The request again, with the credentials the last 407 asked for: here when it has no body, else on a new
    /// connection.
    private func sendAgain(context: ChannelHandlerContext) {
        guard var request = self.request else { return }
        guard !request.hasBody else {
            self.request = nil
            context.fireErrorCaught(NewCredentialsNeedANewConnection())
            return
        }
        request.sends += 1
        self.authorize(&request.head)
        self.request = request
        context.write(self.wrapOutboundOut(.head(request.head)), promise: nil)
        context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
    }

    private func authorize(_ head: inout HTTPRequestHead) {
        head.headers.remove(name: "Proxy-Authorization")
        if let authorization = self.authenticator.authorization(method: head.method.rawValue, uri: head.uri) {
            head.headers.add(name: "Proxy-Authorization", value: authorization)
        }
    }
}
