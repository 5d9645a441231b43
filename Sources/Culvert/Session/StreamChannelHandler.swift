import CompressNIO
import CulvertCore
import NIOCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One stream's socket (a listener's accepted connection on the client, a target connection on the server) and the
/// session's record of it: what waits to be framed, what was written and not yet credited back to the peer, how the
/// socket is to be half-closed, and its compression contexts. The session reaches a stream's state and its socket
/// through this one object, with no table lookup per event.
///
/// The socket runs with auto-read off: the session lets a read through only while the stream has credit, so a
/// stream whose peer does not read simply stops being read here, without affecting other streams.
final class StreamChannelHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let id: StreamID
    let target: TargetAddress
    private weak var session: TunnelSession?
    private(set) var context: ChannelHandlerContext?
    private var failed = false

    /// Bytes read from the socket that have no credit yet.
    var pendingSend: ByteBuffer?
    /// The socket reached EOF; FIN goes out once `pendingSend` is empty.
    var finPending = false
    /// Bytes written to the socket and not yet credited back to the peer (held while the socket is not writable).
    var uncreditedBytes = 0
    /// The peer finished: the socket's output is shut (or being shut) once what was written is out.
    var outputShutRequested = false
    /// Written to but not flushed.
    var needsFlush = false
    /// Waiting in the session's list of streams to read again once the session may send.
    var awaitsSessionRoom = false
    /// The stream was opened by this side and waits for OPEN_OK or OPEN_FAIL.
    var openCompletion: ((StreamOpenResult) -> Void)?
    /// This stream's deflate context for what it sends, created on first use.
    var compressor: ZlibCompressor?
    /// This stream's inflate context for what it receives, created on first use.
    var decompressor: ZlibDecompressor?
    /// Whether sending compressed pays for this stream's data.
    var compressionPolicy = AdaptiveCompressionPolicy()
    /// zlib failed on this stream: it sends raw from now on.
    var compressionFailed = false

    init(id: StreamID, target: TargetAddress, session: TunnelSession) {
        self.id = id
        self.target = target
        self.session = session
    }

    var channel: (any Channel)? { self.context?.channel }
    var isWritable: Bool { self.context?.channel.isWritable ?? false }

    /// Writes `payload` to the socket (flushed at the session's next flush point).
    func write(_ payload: ByteBuffer) {
        self.context?.write(self.wrapOutboundOut(payload), promise: nil)
    }

    func flush() {
        self.needsFlush = false
        self.context?.flush()
    }

    /// Asks the socket for more bytes (let through by ``read(context:)`` only while the session allows).
    func requestRead() {
        self.context?.read()
    }

    /// Runs `body` once everything written so far has reached the socket (writes complete in order).
    func afterWrites(_ body: @escaping (StreamChannelHandler) -> Void) {
        guard let context = self.context else { return }
        let promise = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(self.wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: promise)
        promise.futureResult.assumeIsolated().whenComplete { _ in body(self) }
    }

    /// Shuts the socket's output once what was written is out.
    func shutOutputAfterWrites() {
        self.afterWrites { handler in handler.context?.close(mode: .output, promise: nil) }
    }

    /// Closes the socket once what was written is out.
    func closeAfterWrites() {
        self.afterWrites { handler in handler.context?.close(promise: nil) }
    }

    /// Closes the socket once what was written is out, or after `limit` if its reader takes no more: what the
    /// session received (and acknowledged) before it ended still reaches the application, and a reader that
    /// stopped reading does not hold the socket for ever.
    func closeAfterWrites(within limit: TimeAmount) {
        guard let context = self.context else { return }
        let channel = context.channel
        let deadline = context.eventLoop.assumeIsolated().scheduleTask(in: limit) { channel.close(promise: nil) }
        self.afterWrites { handler in
            deadline.cancel()
            channel.close(promise: nil)
        }
    }

    /// Closes the socket now; with `abort`, with a TCP reset (SO_LINGER 0): the application must not take what it
    /// got for the whole.
    func close(abort: Bool) {
        guard let context = self.context else { return }
        if abort, let options = context.channel as? any SocketOptionProvider {
            let channel = context.channel
            options.setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { _ in channel.close(promise: nil) }
        } else {
            context.close(promise: nil)
        }
    }

    // MARK: ChannelHandler

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    /// A read requested before the channel was registered is lost, and OPEN_OK can beat the registration of an
    /// accepted channel: so ask again once the channel is active.
    func channelActive(context: ChannelHandlerContext) {
        self.session?.localReadComplete(self)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = self.unwrapInboundIn(data)
        // A handler that leaves the pipeline may hand on an empty buffer (NIOSOCKS's parser does).
        guard buffer.readableBytes > 0 else { return }
        self.session?.localRead(self, buffer)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.session?.localReadComplete(self)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { self.session?.localWritable(self) }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event { self.session?.localInputClosed(self) }
        context.fireUserInboundEventTriggered(event)
    }

    /// Lets a read through only while the stream may take more bytes, whoever asked for it: auto-read is off,
    /// but this gate keeps a stream that has no credit (or is still opening) from buffering anything.
    func read(context: ChannelHandlerContext) {
        guard let session = self.session, session.mayReadLocally(self) else { return }
        context.read()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.session?.localClosed(self, afterError: self.failed)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.failed = true
        context.close(promise: nil)
    }
}
