import CulvertCore
import CulvertTransport
import Logging
import NIOCore
import NIOPosix

extension TargetConnector {
    /// A stream to a UDP target: a UDP socket connected to it, joined to the stream by a ``DatagramStreamPair``.
    /// Each datagram from the stream is sent to the target, each datagram the target sends back goes to the stream;
    /// what a full socket cannot take is dropped. `udpTimeout` without a datagram either way ends the stream.
    func connectDatagrams(to target: TargetAddress, on eventLoop: any EventLoop, logger: Logger) -> EventLoopFuture<any Channel> {
        let idleTimeout = self.udpTimeout
        return DatagramBootstrap(group: eventLoop)
            // NIO reads datagrams into 2 KiB by default and cuts longer ones: read the largest UDP allows.
            .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: DatagramStreamPair.maximumDatagram + 1))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(IdleStateHandler(allTimeout: idleTimeout))
                }
            }
            .connect(host: target.host, port: target.port)
            .flatMapErrorThrowing { error in
                let reason = TransportDialer.describe(error)
                logger.info("cannot reach UDP target \(target): \(reason)")
                throw StreamOpenFailure(reason == "host not found" ? .unresolvable : .other, "cannot reach \(target): \(reason)")
            }
            .flatMap { (socket: any Channel) -> EventLoopFuture<any Channel> in
                guard let remote = socket.remoteAddress else {
                    socket.close(promise: nil)
                    return eventLoop.makeFailedFuture(StreamOpenFailure(.other, "cannot reach \(target): no address"))
                }
                return DatagramStreamPair.make(
                    on: eventLoop,
                    onDatagram: { datagram in
                        guard socket.isWritable else {
                            logger.debug("UDP to \(target): dropped a datagram (the socket is full)")
                            return
                        }
                        socket.writeAndFlush(AddressedEnvelope(remoteAddress: remote, data: datagram), promise: nil)
                    },
                    onClosed: { socket.close(promise: nil) }
                ).flatMapThrowing { ends in
                    try socket.pipeline.syncOperations.addHandler(DatagramReplyRelay(stream: ends.datagrams, target: target, logger: logger))
                    socket.closeFuture.whenComplete { _ in ends.datagrams.close(promise: nil) }
                    return ends.stream
                }.flatMapErrorThrowing { error in
                    socket.close(promise: nil)
                    throw error
                }
            }
    }
}

/// On a UDP socket connected to a target: hands each datagram the target sends to the stream (dropped when the
/// stream's socket is full), and closes the socket once it has been idle for the UDP timeout (`IdleStateHandler`).
final class DatagramReplyRelay: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>

    private let stream: any Channel
    private let target: TargetAddress
    private let logger: Logger

    init(stream: any Channel, target: TargetAddress, logger: Logger) {
        self.stream = stream
        self.target = target
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = self.unwrapInboundIn(data)
        guard self.stream.isWritable else {
            self.logger.debug("UDP from \(self.target): dropped a datagram (the tunnel is slower than the target)")
            return
        }
        self.stream.writeAndFlush(envelope.data, promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            self.logger.debug("UDP stream to \(self.target) idle: closing it")
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // ICMP "port unreachable" comes back as a read error on a connected UDP socket: the target is not there.
        self.logger.debug("UDP target \(self.target): \(error)")
    }
}
