import NIOCore
import NIOExtras
import NIOPosix

/// A UDP flow as a stream: a Unix socket pair whose one end the tunnel carries as an ordinary stream (so the session
/// and the mux need nothing for UDP), while the other end takes datagrams, each written with a 2-byte length in
/// front (NIOExtras' `LengthFieldPrepender`) and read back the same way (`LengthFieldBasedFrameDecoder`): datagram
/// boundaries survive the byte stream. Both ends live on one loop.
enum DatagramStreamPair {
    /// The largest UDP payload over IPv4 (65,535 − 8 − 20): longer datagrams are refused.
    static let maximumDatagram = 65_507

    struct Ends {
        /// For the tunnel: auto-read off, remote half-closure allowed, as a listener's connection.
        let stream: any Channel
        /// Write datagrams here (ByteBuffer); what comes back is handed to `onDatagram`.
        let datagrams: any Channel
    }

    /// Makes a pair on `loop`; `onDatagram` hears each datagram from the stream, `onClosed` that the stream's side
    /// is gone (the peer finished or reset the stream).
    static func make(
        on loop: any EventLoop,
        onDatagram: @escaping (ByteBuffer) -> Void,
        onClosed: @escaping () -> Void
    ) -> EventLoopFuture<Ends> {
        let streamDescriptor: CInt
        let datagramDescriptor: CInt
        do { (streamDescriptor, datagramDescriptor) = try SocketPair.make() } catch { return loop.makeFailedFuture(error) }
        let stream = ClientBootstrap(group: loop)
            .channelOption(.autoRead, value: false)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .withConnectedSocket(streamDescriptor)
        let datagrams = ClientBootstrap(group: loop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LengthFieldBasedFrameDecoder(lengthFieldBitLength: .twoBytes)))
                    try channel.pipeline.syncOperations.addHandler(LengthFieldPrepender(lengthFieldLength: .two))
                }
            }
            .withConnectedSocket(datagramDescriptor)
        let promise = loop.makePromise(of: Ends.self)
        stream.and(datagrams).assumeIsolated().whenComplete { result in
            switch result {
            case .success(let (streamEnd, datagramEnd)):
                do {
                    try datagramEnd.pipeline.syncOperations.addHandler(DatagramEndHandler(onDatagram: onDatagram, onClosed: onClosed))
                    promise.succeed(Ends(stream: streamEnd, datagrams: datagramEnd))
                } catch {
                    streamEnd.close(promise: nil)
                    datagramEnd.close(promise: nil)
                    promise.fail(error)
                }
            case .failure(let error):
                // A channel that did not come up leaves its descriptor open; the other one's channel owns its own.
                stream.whenSuccess { $0.close(promise: nil) }
                datagrams.whenSuccess { $0.close(promise: nil) }
                stream.whenFailure { _ in SocketPair.close(streamDescriptor) }
                datagrams.whenFailure { _ in SocketPair.close(datagramDescriptor) }
                promise.fail(error)
            }
        }
        return promise.futureResult
    }
}

/// The datagram end's last handler: each decoded datagram to `onDatagram`, the end of the stream to `onClosed`.
private final class DatagramEndHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let onDatagram: (ByteBuffer) -> Void
    private let onClosed: () -> Void

    init(onDatagram: @escaping (ByteBuffer) -> Void, onClosed: @escaping () -> Void) {
        self.onDatagram = onDatagram
        self.onClosed = onClosed
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.onDatagram(self.unwrapInboundIn(data))
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event { context.close(promise: nil) }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.onClosed()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
