import CulvertCore
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

/// One target's stream for an HTTP proxy client's forwarded (absolute-form) requests. A Unix socket pair joins the
/// two: one end is handed to the tunnel as a stream to the target, exactly as an accepted connection would be, so the
/// session needs nothing new; this side writes the rewritten requests into the other end through NIO's
/// `HTTPRequestEncoder` (which chunks bodies again where the request was chunked) and relays what comes back to the
/// client as bytes. Everything runs on the client connection's loop.
///
/// The pair costs one more copy per byte than CONNECT, which hands the client's own socket to the tunnel: plain-HTTP
/// requests through a proxy are page loads and package indexes, not bulk transfers (HTTPS goes by CONNECT).
final class HTTPProxyUpstream {
    let target: TargetAddress
    private let client: any Channel
    private let logger: Logger
    /// This side's end of the pair, once registered.
    private var channel: (any Channel)?
    /// Request parts written before the end was registered.
    private var pending: [HTTPClientRequestPart] = []
    private var outputFinishRequested = false
    private var closed = false
    /// Bytes of a response reached the client: when the target then closes, the client's connection must close too
    /// (a response without a length ends with its connection).
    private var deliveredResponse = false
    private let onClosed: (HTTPProxyUpstream, _ deliveredResponse: Bool) -> Void
    private let onWritable: () -> Void

    /// Opens the pair and hands one end to `tunnel` for `target`; `onRefused` answers the client when the stream
    /// cannot be opened, `onClosed` hears that the target's side is gone, `onWritable` that requests may flow again.
    init(
        target: TargetAddress, client: any Channel, tunnel: any StreamOpening, logger: Logger,
        onRefused: @escaping (HTTPResponseStatus, String) -> Void,
        onClosed: @escaping (HTTPProxyUpstream, Bool) -> Void,
        onWritable: @escaping () -> Void
    ) {
        self.target = target
        self.client = client
        self.logger = logger
        self.onClosed = onClosed
        self.onWritable = onWritable
        let descriptors: (CInt, CInt)
        do { descriptors = try SocketPair.make() } catch {
            self.closed = true
            onRefused(.internalServerError, "culvert: cannot make a socket pair for the request: \(error)")
            return
        }
        let loop = client.eventLoop
        ClientBootstrap(group: loop)
            .channelOption(.autoRead, value: false)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .withConnectedSocket(descriptors.0)
            .assumeIsolated()
            .whenComplete { result in
                switch result {
                case .success(let streamEnd):
                    tunnel.carry(streamEnd, to: target) { opening in
                        switch opening {
                        case .opened:
                            break
                        case .refused(let reason, let message):
                            logger.info("HTTP proxy request to \(target) failed: \(message)")
                            onRefused(HTTPProxyConnectionHandler.status(for: reason), "culvert: the tunnel's server could not open \(target): \(message)")
                        case .unavailable(let reason):
                            onRefused(.serviceUnavailable, "culvert: the tunnel cannot carry the request now: \(reason)")
                        }
                    }
                case .failure(let error):
                    SocketPair.close(descriptors.0)
                    onRefused(.internalServerError, "culvert: cannot use a socket pair for the request: \(error)")
                }
            }
        ClientBootstrap(group: loop)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .withConnectedSocket(descriptors.1)
            .assumeIsolated()
            .whenComplete { [self] result in
                switch result {
                case .success(let channel):
                    self.ready(channel)
                case .failure:
                    SocketPair.close(descriptors.1)
                    self.closed = true
                }
            }
    }

    var isUsable: Bool { !self.closed }
    /// Whether the next request part can be taken now.
    var isWritable: Bool { self.channel?.isWritable ?? false }

    private func ready(_ channel: any Channel) {
        guard !self.closed else {
            channel.close(promise: nil)
            return
        }
        do {
            try channel.pipeline.syncOperations.addHandler(HTTPRequestEncoder())
            try channel.pipeline.syncOperations.addHandler(HTTPProxyResponseRelay(upstream: self))
        } catch {
            channel.close(promise: nil)
            self.closed = true
            return
        }
        self.channel = channel
        channel.setOption(.autoRead, value: self.client.isWritable).whenFailure { _ in }
        for part in self.pending { channel.write(part, promise: nil) }
        self.pending = []
        channel.flush()
        if self.outputFinishRequested { channel.close(mode: .output, promise: nil) }
        self.onWritable()
    }

    /// Writes a request part to the target's stream (held until the pair is ready).
    func send(_ part: HTTPClientRequestPart) {
        guard !self.closed else { return }
        guard let channel = self.channel else {
            self.pending.append(part)
            return
        }
        channel.writeAndFlush(part, promise: nil)
    }

    /// The client sends nothing more: the target's stream is half-closed once what was written is out.
    func finishRequests() {
        self.outputFinishRequested = true
        self.channel?.close(mode: .output, promise: nil)
    }

    /// Reads responses only while the client takes them.
    func setReading(_ reading: Bool) {
        self.channel?.setOption(.autoRead, value: reading).whenFailure { _ in }
    }

    func close() {
        self.closed = true
        self.channel?.close(promise: nil)
    }

    // MARK: From the relay

    func relay(_ bytes: ByteBuffer) {
        self.deliveredResponse = true
        self.client.write(bytes, promise: nil)
    }

    func relayComplete() {
        self.client.flush()
    }

    func writabilityChanged() {
        if self.channel?.isWritable ?? false { self.onWritable() }
    }

    func targetClosed() {
        guard !self.closed || self.channel != nil else { return }
        self.closed = true
        self.channel?.close(promise: nil)
        self.channel = nil
        self.onClosed(self, self.deliveredResponse)
    }
}

/// Hands what the target sends on the upstream's end of the pair to the ``HTTPProxyUpstream``, which relays it.
final class HTTPProxyResponseRelay: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let upstream: HTTPProxyUpstream

    init(upstream: HTTPProxyUpstream) {
        self.upstream = upstream
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.upstream.relay(self.unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.upstream.relayComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.upstream.writabilityChanged()
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event { self.upstream.targetClosed() }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.upstream.targetClosed()
        context.fireChannelInactive()
    }
}
