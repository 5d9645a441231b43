public import NIOCore
import NIOPosix

/// Benchmark targets on loopback: a sink that counts what it receives and a source that sends what it is asked for
/// (and leaves closing to the client).
public final class LoadTargets: Sendable {
    private let sinkChannel: any Channel
    private let sourceChannel: any Channel

    /// Reads until EOF, then answers the byte count as a u64 and closes.
    public var sinkPort: Int { self.sinkChannel.localAddress!.port! }
    /// Reads a u64 count, sends that many bytes, then closes.
    public var sourcePort: Int { self.sourceChannel.localAddress!.port! }

    private init(sinkChannel: any Channel, sourceChannel: any Channel) {
        self.sinkChannel = sinkChannel
        self.sourceChannel = sourceChannel
    }

    public static func start(group: any EventLoopGroup) async throws -> LoadTargets {
        func listen(_ makeHandler: @escaping @Sendable () -> any ChannelHandler) async throws -> any Channel {
            try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 512)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
                .childChannelOption(.allowRemoteHalfClosure, value: true)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(makeHandler()) }
                }
                .bind(host: "127.0.0.1", port: 0)
                .get()
        }
        let sink = try await listen { SinkHandler() }
        let source = try await listen { SourceHandler() }
        return LoadTargets(sinkChannel: sink, sourceChannel: source)
    }

    public func close() async {
        try? await self.sinkChannel.close()
        try? await self.sourceChannel.close()
    }
}

/// Counts the bytes of an upload: an 8-byte big-endian length, then that many bytes; answers the count (8 bytes)
/// once all arrived, or at end of input. Needs no half-close, so tunnels that cannot carry one (GNU httptunnel)
/// can be measured too.
final class SinkHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private var header = ByteBuffer()
    private var expected: UInt64?
    private var count: UInt64 = 0
    private var answered = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = self.unwrapInboundIn(data)
        if self.expected == nil {
            let take = min(8 - self.header.readableBytes, buffer.readableBytes)
            var part = buffer.readSlice(length: take)!
            self.header.writeBuffer(&part)
            if self.header.readableBytes == 8 { self.expected = self.header.readInteger(as: UInt64.self) }
        }
        self.count += UInt64(buffer.readableBytes)
        if let expected = self.expected, self.count >= expected { self.answer(context: context) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case ChannelEvent.inputClosed = event else { return }
        self.answer(context: context)
    }

    private func answer(context: ChannelHandlerContext) {
        guard !self.answered else { return }
        self.answered = true
        var reply = context.channel.allocator.buffer(capacity: 8)
        reply.writeInteger(self.count)
        let channel = context.channel
        context.writeAndFlush(self.wrapOutboundOut(reply)).whenComplete { _ in channel.close(promise: nil) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
}

final class SourceHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private var request = ByteBuffer()
    private var remaining: Int?
    private var chunk = ByteBuffer(repeating: 0x5A, count: 64 * 1024)

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard self.remaining == nil else { return }
        var buffer = self.unwrapInboundIn(data)
        self.request.writeBuffer(&buffer)
        if let count = self.request.readInteger(as: UInt64.self) {
            self.remaining = Int(count)
            self.writeMore(context: context)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.writeMore(context: context)
    }

    /// Writes while the channel is writable. State is updated before each write: a write can change writability
    /// and re-enter this method from `channelWritabilityChanged`.
    private func writeMore(context: ChannelHandlerContext) {
        while let remaining = self.remaining, remaining > 0, context.channel.isWritable {
            let size = min(remaining, self.chunk.readableBytes)
            self.remaining = remaining - size
            context.write(self.wrapOutboundOut(self.chunk.getSlice(at: 0, length: size)!), promise: nil)
            if self.remaining == 0 { break }
        }
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
}
