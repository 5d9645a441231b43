import CulvertCore
import CulvertTransport
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension LocalListener {
    /// The `-H [BIND:]PORT` listener: an HTTP proxy, what browsers, package managers and `HTTPS_PROXY` users point
    /// at. `CONNECT host:port` becomes a stream to that target, answered 200 only once the server opened it (403 when
    /// its allowlist refuses, 502 when the target fails, 504 when it does not answer, each with a one-line body).
    /// Absolute-form requests (`GET http://host/…`) go as origin-form requests on a stream to host:port, one stream
    /// per target kept alive for the connection's next requests to it.
    public static func httpProxy(_ address: ListenAddress) -> LocalListener {
        LocalListener(flag: "-H", text: address.description, address: address, announcement: { "HTTP proxy on \($0)" }) {
            channel, tunnel, logger in
            let decoder = ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes))
            try channel.pipeline.syncOperations.addHandler(decoder)
            try channel.pipeline.syncOperations.addHandler(HTTPProxyConnectionHandler(decoder: decoder, tunnel: tunnel, logger: logger))
        }
    }
}

/// Answers one HTTP proxy client: CONNECT hands the connection itself to the tunnel (and then leaves the pipeline
/// with the decoder, so the bytes flow untouched); absolute-form requests are rewritten to origin-form and sent on
/// an ``HTTPProxyUpstream`` per target, whose responses are relayed back as they come.
///
/// Responses are relayed as bytes, not parsed: a client sends its next request once the last response is complete
/// (HTTP/1.1 pipelining is not supported), so a request to another target can go on its own stream at once.
final class HTTPProxyConnectionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = ByteBuffer

    /// At most this many targets keep a stream open for one client connection; the least recently used goes first.
    static let maximumUpstreams = 8

    private enum Mode {
        /// Waiting for a request head.
        case idle
        /// A CONNECT head arrived; its end opens the stream.
        case connectRequested(TargetAddress)
        /// The CONNECT stream is opening: nothing more is read.
        case connecting
        /// A forwarded request's body goes to this upstream.
        case forwarding(HTTPProxyUpstream)
        /// Answered with an error, or handed over to the stream: nothing more to do here.
        case done
    }

    private let decoder: ByteToMessageHandler<HTTPRequestDecoder>
    private let tunnel: any StreamOpening
    private let logger: Logger
    private var mode = Mode.idle
    private var upstreams: [TargetAddress: HTTPProxyUpstream] = [:]
    /// The upstream of the latest forwarded request: the one whose response may still be coming.
    private weak var latestUpstream: HTTPProxyUpstream?
    private var recentTargets: [TargetAddress] = []
    /// The client half-closed while a CONNECT stream was opening: the stream hears it once it is open.
    private var inputClosedWhileConnecting = false
    private var context: ChannelHandlerContext?

    init(decoder: ByteToMessageHandler<HTTPRequestDecoder>, tunnel: any StreamOpening, logger: Logger) {
        self.decoder = decoder
        self.tunnel = tunnel
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { context.read() }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        context.read()
    }

    /// Leaves the pipeline before the channel's teardown removes the decoder, which hands what it holds on as bytes.
    func channelInactive(context: ChannelHandlerContext) {
        self.mode = .done
        for upstream in self.upstreams.values { upstream.close() }
        self.upstreams = [:]
        context.fireChannelInactive()
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.readIfReady(context: context)
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        // Responses are read from the upstreams only while the client takes them.
        for upstream in self.upstreams.values { upstream.setReading(context.channel.isWritable) }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case ChannelEvent.inputClosed = event else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        switch self.mode {
        case .connecting:
            self.inputClosedWhileConnecting = true
        case .done:
            context.fireUserInboundEventTriggered(event)
        case .idle, .connectRequested, .forwarding:
            // The client sends nothing more; answers still in flight reach it, then the upstreams end it.
            for upstream in self.upstreams.values { upstream.finishRequests() }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.logger.info("HTTP proxy client sent a request that is not HTTP/1.1: \(error)")
        self.answer(.badRequest, "culvert's HTTP proxy could not parse the request", context: context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch (self.unwrapInboundIn(data), self.mode) {
        case (.head(let head), .idle):
            self.requestHead(head, context: context)
        case (.body, .connectRequested):
            break  // A CONNECT request's body means nothing.
        case (.end, .connectRequested(let target)):
            self.openConnectStream(to: target, context: context)
        case (.body(let body), .forwarding(let upstream)):
            upstream.send(.body(.byteBuffer(body)))
        case (.end(let trailers), .forwarding(let upstream)):
            upstream.send(.end(trailers))
            self.mode = .idle
        case (_, .done):
            break
        default:
            self.answer(.badRequest, "culvert's HTTP proxy got a request part out of order", context: context)
        }
    }

    private func readIfReady(context: ChannelHandlerContext) {
        switch self.mode {
        case .idle, .connectRequested: context.read()
        case .forwarding(let upstream): if upstream.isWritable { context.read() }
        case .connecting, .done: break
        }
    }

    private func requestHead(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        if head.method == .CONNECT {
            guard let target = try? TargetAddress(parsing: head.uri, flag: "CONNECT") else {
                self.answer(.badRequest, "CONNECT needs HOST:PORT, got '\(head.uri)'", context: context)
                return
            }
            self.mode = .connectRequested(target)
            return
        }
        guard let (target, originForm) = Self.split(absoluteURI: head.uri) else {
            self.answer(
                .badRequest,
                "culvert's HTTP proxy takes absolute http:// URLs (GET http://host/path) or CONNECT host:port, got '\(head.uri)'",
                context: context
            )
            return
        }
        var forwarded = head
        forwarded.uri = originForm
        forwarded.headers.remove(name: "Proxy-Connection")
        forwarded.headers.remove(name: "Proxy-Authorization")
        if !forwarded.headers.contains(name: "Host") { forwarded.headers.add(name: "Host", value: Self.hostHeader(for: target)) }
        let upstream = self.upstream(for: target, context: context)
        self.latestUpstream = upstream
        upstream.send(.head(forwarded))
        self.mode = .forwarding(upstream)
    }

    /// The kept-alive upstream for `target`, or a new one.
    private func upstream(for target: TargetAddress, context: ChannelHandlerContext) -> HTTPProxyUpstream {
        self.recentTargets.removeAll { $0 == target }
        self.recentTargets.append(target)
        if let existing = self.upstreams[target], existing.isUsable { return existing }
        if self.upstreams.count >= Self.maximumUpstreams, let oldest = self.recentTargets.first(where: { $0 != target }) {
            self.upstreams.removeValue(forKey: oldest)?.close()
            self.recentTargets.removeAll { $0 == oldest }
        }
        let client = context.channel
        let upstream = HTTPProxyUpstream(
            target: target, client: client, tunnel: self.tunnel, logger: self.logger,
            onRefused: { [weak self] status, message in
                guard let self, let context = self.context else { return }
                self.answer(status, message, context: context)
            },
            onClosed: { [weak self] upstream, deliveredResponse in
                guard let self, self.upstreams[upstream.target] === upstream else { return }
                self.upstreams.removeValue(forKey: upstream.target)
                // A response may end with its connection: so does the client's, once it has the bytes. Only the
                // upstream of the latest request can be in the middle of one; an older one that its origin closed
                // while idle just goes.
                if deliveredResponse, upstream === self.latestUpstream {
                    self.closeAfterWrites()
                }
            },
            onWritable: { [weak self] in
                guard let self, let context = self.context else { return }
                self.readIfReady(context: context)
            }
        )
        self.upstreams[target] = upstream
        return upstream
    }

    private func closeAfterWrites() {
        guard let context = self.context else { return }
        self.mode = .done
        context.writeAndFlush(self.wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)))
            .assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    private func openConnectStream(to target: TargetAddress, context: ChannelHandlerContext) {
        self.mode = .connecting
        self.tunnel.carry(context.channel, to: target) { [self] result in
            switch result {
            case .opened:
                self.mode = .done
                var reply = context.channel.allocator.buffer(capacity: 64)
                reply.writeString("HTTP/1.1 200 Connection established\r\n\r\n")
                context.writeAndFlush(self.wrapOutboundOut(reply), promise: nil)
                let pipeline = context.pipeline.syncOperations
                pipeline.removeHandler(context: context, promise: nil)
                // The decoder hands on what the client sent after its request (a TLS ClientHello, say).
                pipeline.removeHandler(self.decoder, promise: nil)
                pipeline.fireChannelReadComplete()
                if self.inputClosedWhileConnecting { pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed) }
            case .refused(let reason, let message):
                self.logger.info("HTTP proxy CONNECT to \(target) failed: \(message)")
                self.answer(Self.status(for: reason), "culvert: the tunnel's server could not open \(target): \(message)", context: context)
            case .unavailable(let reason):
                self.logger.info("HTTP proxy CONNECT to \(target) not carried: \(reason)")
                self.answer(.serviceUnavailable, "culvert: the tunnel cannot carry the connection now: \(reason)", context: context)
            }
        }
    }

    /// Answers with `status` and a one-line body, then closes.
    private func answer(_ status: HTTPResponseStatus, _ message: String, context: ChannelHandlerContext) {
        self.mode = .done
        guard context.channel.isActive else { return }
        let body = message + "\n"
        var response = context.channel.allocator.buffer(capacity: body.utf8.count + 128)
        response.writeString(
            "HTTP/1.1 \(status.code) \(status.reasonPhrase)\r\nContent-Type: text/plain; charset=utf-8\r\n"
                + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
        )
        context.writeAndFlush(self.wrapOutboundOut(response)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    /// The status for an OPEN_FAIL reason: the allowlist is a refusal (403), a target that does not answer a
    /// timeout (504), anything else a bad gateway (502).
    static func status(for reason: OpenFailReason) -> HTTPResponseStatus {
        switch reason {
        case .notAllowed: .forbidden
        case .timedOut: .gatewayTimeout
        case .tooManyStreams, .goingAway: .serviceUnavailable
        default: .badGateway
        }
    }

    /// `http://host[:port]/path?query` into its target (port 80 by default) and origin form (`/path?query`).
    static func split(absoluteURI uri: String) -> (TargetAddress, String)? {
        guard uri.lowercased().hasPrefix("http://") else { return nil }
        let rest = uri.dropFirst("http://".count)
        let authorityEnd = rest.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? rest.endIndex
        var authority = rest[..<authorityEnd]
        if let at = authority.lastIndex(of: "@") { authority = authority[authority.index(after: at)...] }
        var path = String(rest[authorityEnd...])
        if let fragment = path.firstIndex(of: "#") { path = String(path[..<fragment]) }
        if path.isEmpty || path.hasPrefix("?") { path = "/" + path }
        let host: String
        var port = 80
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return nil }
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            if after.hasPrefix(":") {
                guard let value = Int(after.dropFirst()), (1...65535).contains(value) else { return nil }
                port = value
            } else if !after.isEmpty {
                return nil
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = String(authority[..<colon])
            guard let value = Int(authority[authority.index(after: colon)...]), (1...65535).contains(value) else { return nil }
            port = value
        } else {
            host = String(authority)
        }
        guard !host.isEmpty else { return nil }
        return (TargetAddress(host: host, port: port), path)
    }

    /// The Host header for `target`: the port only when it is not 80.
    static func hostHeader(for target: TargetAddress) -> String {
        let host = target.host.contains(":") ? "[\(target.host)]" : target.host
        return target.port == 80 ? host : "\(host):\(target.port)"
    }
}
