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
///
/// With NTLM, which authenticates the connection, the first request waits while the handler runs the handshake on
/// the connection — NEGOTIATE, the proxy's CHALLENGE, AUTHENTICATE — on `HEAD` requests for the same URL (no body,
/// no effect on the server); then it goes out, and the requests after it, with no credentials at all.
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

    /// Where this connection's NTLM handshake stands.
    private enum NTLMStage {
        /// No handshake (not NTLM), or it is done: requests go as they come.
        case none
        /// The NEGOTIATE (`authenticating: false`) or the AUTHENTICATE (`true`) is out; the requests wait.
        case handshaking(authenticating: Bool, held: [(HTTPClientRequestPart, EventLoopPromise<Void>?)], answer: String?)
    }

    private let authenticator: ProxyAuthenticator
    private var ntlm = NTLMStage.none
    /// Whether this connection has finished an NTLM handshake.
    private var connectionAuthenticated = false
    /// The request whose response has not begun.
    private var request: Request?
    /// A 407 is being read to its end; then the request goes again.
    private var answeringChallenge = false

    init(authenticator: ProxyAuthenticator) {
        self.authenticator = authenticator
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let part = self.unwrapOutboundIn(data)
        if case .handshaking(let authenticating, var held, let answer) = self.ntlm {
            held.append((part, promise))
            self.ntlm = .handshaking(authenticating: authenticating, held: held, answer: answer)
            return
        }
        if case .head(let head) = part, !self.connectionAuthenticated, self.authenticator.isConnectionBased {
            self.ntlm = .handshaking(authenticating: false, held: [(part, promise)], answer: nil)
            self.sendHandshake(context: context, like: head, authorization: self.authenticator.ntlmNegotiation())
            return
        }
        if self.connectionAuthenticated {
            context.write(data, promise: promise)
            return
        }
        switch part {
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
        if case .handshaking = self.ntlm {
            self.handshakeRead(context: context, part)
            return
        }
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

    // MARK: NTLM

    /// A `HEAD` of `request`'s URL with `authorization`: the handshake's messages go on requests of their own.
    private func sendHandshake(context: ChannelHandlerContext, like request: HTTPRequestHead, authorization: String) {
        var headers = HTTPHeaders()
        for name in ["Host", "User-Agent"] { if let value = request.headers.first(name: name) { headers.add(name: name, value: value) } }
        headers.add(name: "Proxy-Authorization", value: authorization)
        headers.add(name: "Proxy-Connection", value: "keep-alive")
        context.write(self.wrapOutboundOut(.head(HTTPRequestHead(version: .http1_1, method: .HEAD, uri: request.uri, headers: headers))), promise: nil)
        context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
    }

    /// An answer to a handshake request: a CHALLENGE gets the AUTHENTICATE; anything but a 407 after it means
    /// the connection is authenticated, and the held requests go. A 407 that ends the handshake goes up as the
    /// answer to the first held request (the credentials were refused, or the proxy broke off).
    private func handshakeRead(context: ChannelHandlerContext, _ part: HTTPClientResponsePart) {
        guard case .handshaking(let authenticating, let held, let answer) = self.ntlm else { return }
        switch part {
        case .head(let head):
            if head.status == .proxyAuthenticationRequired {
                let challenges = ProxyChallenge.parse(head.headers["Proxy-Authenticate"])
                if !authenticating, head.isKeepAlive, let answer = self.authenticator.ntlmAuthentication(answering: challenges) {
                    self.ntlm = .handshaking(authenticating: false, held: held, answer: answer)
                    return
                }
                // Refused: the held request is answered with this 407, and the handshake is over.
                self.ntlm = .none
                for (_, promise) in held { promise?.succeed() }
                context.fireChannelRead(self.wrapInboundOut(part))
                return
            }
            // Through: the connection is authenticated (the HEAD's own answer is dropped).
            self.ntlm = .handshaking(authenticating: true, held: held, answer: nil)
            self.connectionAuthenticated = true
        case .body:
            break
        case .end:
            if let answer {
                self.ntlm = .handshaking(authenticating: true, held: held, answer: nil)
                guard case .head(let first)? = held.first?.0 else { return }
                self.sendHandshake(context: context, like: first, authorization: answer)
            } else if self.connectionAuthenticated {
                self.ntlm = .none
                for (heldPart, promise) in held { context.write(self.wrapOutboundOut(heldPart), promise: promise) }
                context.flush()
            }
        }
    }

    private func authorize(_ head: inout HTTPRequestHead) {
        head.headers.remove(name: "Proxy-Authorization")
        if let authorization = self.authenticator.authorization(method: head.method.rawValue, uri: head.uri) {
            head.headers.add(name: "Proxy-Authorization", value: authorization)
        }
    }
}
