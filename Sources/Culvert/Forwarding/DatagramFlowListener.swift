import CulvertCore
import CulvertTransport
import Logging
import NIOCore
import NIOPosix

/// A UDP listener whose flows become streams (`-L …/udp` on the client, `-R …/udp` on the server): each source
/// address is a flow with a stream of its own (a ``DatagramStreamPair``) to `target`, replies go back to that
/// address, and a flow with no datagram either way for `idleTimeout` ends its stream. A datagram that the tunnel
/// cannot take now (its stream is not open yet and 64 wait, or its socket is full) is dropped, not queued without
/// bound, and counted: UDP's senders expect loss, not delay.
final class DatagramFlowListener: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    /// Datagrams a flow holds while its stream opens.
    static let maximumWaitingDatagrams = 64
    /// Flows at once per listener (each holds a stream and two sockets here): datagrams from further senders are
    /// dropped until one idles out, so a flood from many (or forged) addresses cannot exhaust descriptors.
    static let maximumFlows = 1024

    private final class Flow {
        let remote: SocketAddress
        var ends: DatagramStreamPair.Ends?
        var waiting: [ByteBuffer] = []
        var idleTimer: Scheduled<Void>?
        var sent = 0
        var received = 0
        var dropped = 0

        init(remote: SocketAddress) {
            self.remote = remote
        }
    }

    private let target: TargetAddress
    private let tunnel: any StreamOpening
    private let idleTimeout: TimeAmount
    private let logger: Logger
    private var flows: [SocketAddress: Flow] = [:]
    private var context: ChannelHandlerContext?
    /// Datagrams dropped over the listener's life.
    private(set) var droppedDatagrams = 0

    init(target: TargetAddress, tunnel: any StreamOpening, idleTimeout: TimeAmount, logger: Logger) {
        self.target = target
        self.tunnel = tunnel
        self.idleTimeout = idleTimeout
        self.logger = logger
    }

    /// Binds a UDP socket on `address` (on `loop`, the streams' loop) whose flows go to `target`.
    static func bind(
        _ address: ListenAddress, target: TargetAddress, loop: any EventLoop, tunnel: any StreamOpening, idleTimeout: TimeAmount,
        logger: Logger
    ) async throws -> any Channel {
        try await DatagramBootstrap(group: loop)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            // NIO reads datagrams into 2 KiB by default and cuts longer ones: read the largest UDP allows.
            .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: DatagramStreamPair.maximumDatagram + 1))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        DatagramFlowListener(target: target, tunnel: tunnel, idleTimeout: idleTimeout, logger: logger)
                    )
                }
            }
            .bind(host: address.host, port: address.port)
            .get()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        for flow in self.flows.values { flow.ends?.datagrams.close(promise: nil) }
        self.flows = [:]
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A UDP socket reports ICMP errors (a port that answered "unreachable") as read errors: not fatal here.
        self.logger.debug("UDP listener for \(self.target): \(error)")
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = self.unwrapInboundIn(data)
        guard envelope.data.readableBytes <= DatagramStreamPair.maximumDatagram else {
            self.drop(nil, because: "a datagram of \(envelope.data.readableBytes) bytes is longer than UDP allows (\(DatagramStreamPair.maximumDatagram))")
            return
        }
        guard let flow = self.flows[envelope.remoteAddress] ?? self.openFlowIfRoom(from: envelope.remoteAddress, context: context) else {
            self.drop(nil, because: "\(Self.maximumFlows) flows are open (one per sender); a new sender waits for one to idle out")
            return
        }
        self.restartIdleTimer(flow)
        guard let ends = flow.ends else {
            guard flow.waiting.count < Self.maximumWaitingDatagrams else {
                self.drop(flow, because: "its stream is still opening and \(Self.maximumWaitingDatagrams) datagrams wait")
                return
            }
            flow.waiting.append(envelope.data)
            return
        }
        self.send(envelope.data, on: flow, ends: ends)
    }

    private func send(_ datagram: ByteBuffer, on flow: Flow, ends: DatagramStreamPair.Ends) {
        guard ends.datagrams.isWritable else {
            self.drop(flow, because: "the tunnel is slower than the sender")
            return
        }
        flow.sent += 1
        ends.datagrams.writeAndFlush(datagram, promise: nil)
    }

    private func drop(_ flow: Flow?, because reason: String) {
        flow?.dropped += 1
        self.droppedDatagrams += 1
        if self.droppedDatagrams == 1 || self.droppedDatagrams % 1000 == 0 {
            self.logger.warning("UDP to \(self.target): dropped a datagram (\(self.droppedDatagrams) so far): \(reason)")
        }
    }

    private func openFlowIfRoom(from remote: SocketAddress, context: ChannelHandlerContext) -> Flow? {
        guard self.flows.count < Self.maximumFlows else { return nil }
        let flow = Flow(remote: remote)
        self.flows[remote] = flow
        let listener = context.channel
        let target = self.target
        let logger = self.logger
        DatagramStreamPair.make(
            on: context.eventLoop,
            onDatagram: { [weak self, weak flow] reply in
                guard let self, let flow else { return }
                flow.received += 1
                self.restartIdleTimer(flow)
                listener.writeAndFlush(AddressedEnvelope(remoteAddress: remote, data: reply), promise: nil)
            },
            onClosed: { [weak self, weak flow] in
                guard let self, let flow, self.flows[remote] === flow else { return }
                self.flows.removeValue(forKey: remote)
                flow.idleTimer?.cancel()
                logger.debug("UDP flow \(remote.displayText) -> \(target) ended: \(flow.sent) datagrams sent, \(flow.received) received, \(flow.dropped) dropped")
            }
        ).assumeIsolated().whenComplete { [weak self] result in
            guard let self else { return }
            switch result {
            case .success(let ends):
                guard self.flows[remote] === flow else {
                    ends.stream.close(promise: nil)
                    ends.datagrams.close(promise: nil)
                    return
                }
                flow.ends = ends
                self.tunnel.carry(ends.stream, to: target) { opening in
                    switch opening {
                    case .opened: break
                    case .refused(_, let message): logger.warning("UDP flow from \(remote.displayText) to \(target) refused: \(message)")
                    case .unavailable(let reason): logger.info("UDP flow from \(remote.displayText) to \(target) not carried: \(reason)")
                    }
                }
                let waiting = flow.waiting
                flow.waiting = []
                for datagram in waiting { self.send(datagram, on: flow, ends: ends) }
            case .failure(let error):
                self.flows.removeValue(forKey: remote)
                logger.warning("UDP flow from \(remote.displayText) to \(target): cannot make its stream: \(error)")
            }
        }
        return flow
    }

    private func restartIdleTimer(_ flow: Flow) {
        flow.idleTimer?.cancel()
        guard let loop = self.context?.eventLoop else { return }
        flow.idleTimer = loop.assumeIsolated().scheduleTask(in: self.idleTimeout) { [weak flow] in
            // Closing the datagram end ends the stream (FIN), and the far side's UDP socket with it.
            flow?.ends?.datagrams.close(promise: nil)
        }
    }
}

extension LocalListener {
    /// The `-L [BIND:]PORT:HOST:HOSTPORT/udp` listener: a UDP socket whose flows (one per source address) are
    /// streams to the UDP target, each ending after `idleTimeout` without a datagram either way.
    static func datagramForward(_ forward: ForwardSpec, idleTimeout: TimeAmount) -> LocalListener {
        let target = forward.target
        return LocalListener(
            flag: "-L", text: forward.text, address: forward.listenAddress,
            announcement: { "forwarding \($0)/udp -> \(target)" }
        ) { loop, tunnel, logger in
            try await DatagramFlowListener.bind(forward.listenAddress, target: target, loop: loop, tunnel: tunnel, idleTimeout: idleTimeout, logger: logger)
        }
    }
}
