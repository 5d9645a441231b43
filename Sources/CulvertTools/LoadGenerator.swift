public import NIOCore
import NIOPosix

/// Drives benchmark load with channel handlers (no async sequences in the data path), so that the generator is not
/// what limits the figures.
public enum LoadGenerator {
    public struct LoadError: Error, CustomStringConvertible {
        public var description: String
    }

    /// Sends `byteCount` bytes to a sink and returns the seconds until the sink confirmed them all. The bytes are
    /// `corpus` repeated (by default a constant pattern).
    public static func upload(
        port: Int,
        byteCount: Int,
        corpus: ByteBuffer = ByteBuffer(repeating: 0xA5, count: 64 * 1024),
        group: any EventLoopGroup
    ) async throws -> Double {
        let start = ContinuousClock.now
        let done = group.next().makePromise(of: UInt64.self)
        let channel = try await ClientBootstrap(group: done.futureResult.eventLoop)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        UploadHandler(total: byteCount, corpus: corpus, done: done)
                    )
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        let confirmed = try await done.futureResult.get()
        try? await channel.close()
        guard confirmed == UInt64(byteCount) else {
            throw LoadError(description: "sink confirmed \(confirmed) of \(byteCount) bytes")
        }
        return (ContinuousClock.now - start).seconds
    }

    /// Asks a source for `byteCount` bytes and returns the seconds until all arrived.
    public static func download(port: Int, byteCount: Int, group: any EventLoopGroup) async throws -> Double {
        let start = ContinuousClock.now
        let done = group.next().makePromise(of: Int.self)
        _ = try await ClientBootstrap(group: done.futureResult.eventLoop)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(DownloadHandler(total: byteCount, done: done))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        let received = try await done.futureResult.get()
        guard received == byteCount else { throw LoadError(description: "received \(received) of \(byteCount) bytes") }
        return (ContinuousClock.now - start).seconds
    }

    /// One-byte ping-pong against an echo target: returns each round trip's time in seconds.
    public static func pingPong(port: Int, count: Int, group: any EventLoopGroup) async throws -> [Double] {
        let done = group.next().makePromise(of: [Double].self)
        let channel = try await ClientBootstrap(group: done.futureResult.eventLoop)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(PingPongHandler(limit: .count(count), done: done))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        let samples = try await done.futureResult.get()
        try? await channel.close()
        return samples
    }

    /// `count` connections that each make one round trip (so the stream is open end to end) and then stay open and
    /// idle, opened 200 at a time; the caller closes them.
    public static func openIdleConnections(port: Int, count: Int, group: any EventLoopGroup) async throws -> [any Channel] {
        var channels: [any Channel] = []
        channels.reserveCapacity(count)
        while channels.count < count {
            var batch: [(EventLoopFuture<any Channel>, EventLoopFuture<[Double]>)] = []
            for _ in 0..<min(200, count - channels.count) {
                let done = group.next().makePromise(of: [Double].self)
                let channel = ClientBootstrap(group: done.futureResult.eventLoop)
                    .channelOption(.tcpOption(.tcp_nodelay), value: 1)
                    .channelInitializer { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandler(PingPongHandler(limit: .count(1), done: done))
                        }
                    }
                    .connect(host: "127.0.0.1", port: port)
                batch.append((channel, done.futureResult))
            }
            do {
                for (channel, roundTrip) in batch {
                    channels.append(try await channel.get())
                    _ = try await roundTrip.get()
                }
            } catch {
                // The connections opened so far are closed, so that a failed run leaves no descriptors behind for
                // the next measurement to run out of.
                for (channel, _) in batch { channel.whenSuccess { $0.close(promise: nil) } }
                for channel in channels { channel.close(promise: nil) }
                for channel in channels { try? await channel.closeFuture.get() }
                throw error
            }
        }
        return channels
    }

    /// Opens and closes `count` connections, `concurrency` at a time, each after one round trip: stream churn.
    public static func churn(port: Int, count: Int, concurrency: Int = 32, group: any EventLoopGroup) async throws {
        var done = 0
        while done < count {
            let batch = min(concurrency, count - done)
            let channels = try await Self.openIdleConnections(port: port, count: batch, group: group)
            for channel in channels { try? await channel.close() }
            done += batch
        }
    }

    /// `streams` connections each doing one-byte round trips for `seconds`: returns round trips per second.
    public static func concurrentRoundTrips(port: Int, streams: Int, seconds: Double,
                                            group: any EventLoopGroup) async throws -> Double {
        var channels: [any Channel] = []
        var futures: [EventLoopFuture<[Double]>] = []
        let deadline = NIODeadline.now() + .milliseconds(Int64(seconds * 1000))
        let start = ContinuousClock.now
        for _ in 0..<streams {
            let done = group.next().makePromise(of: [Double].self)
            futures.append(done.futureResult)
            channels.append(
                try await ClientBootstrap(group: done.futureResult.eventLoop)
                    .channelOption(.tcpOption(.tcp_nodelay), value: 1)
                    .channelInitializer { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandler(
                                PingPongHandler(limit: .until(deadline), done: done)
                            )
                        }
                    }
                    .connect(host: "127.0.0.1", port: port).get()
            )
        }
        var total = 0
        for future in futures { total += try await future.get().count }
        let elapsed = (ContinuousClock.now - start).seconds
        for channel in channels { try? await channel.close() }
        return Double(total) / elapsed
    }
}

final class UploadHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private let total: Int
    private var sent = 0
    private let corpus: ByteBuffer
    private var reply = ByteBuffer()
    private let done: EventLoopPromise<UInt64>

    init(total: Int, corpus: ByteBuffer, done: EventLoopPromise<UInt64>) {
        self.total = total
        self.corpus = corpus
        self.done = done
    }

    func channelActive(context: ChannelHandlerContext) {
        var header = context.channel.allocator.buffer(capacity: 8)
        header.writeInteger(UInt64(self.total))
        context.write(self.wrapOutboundOut(header), promise: nil)
        self.writeMore(context: context)
    }
    func channelWritabilityChanged(context: ChannelHandlerContext) { self.writeMore(context: context) }

    /// Writes while the channel is writable; `sent` is updated before each write because a write can re-enter
    /// this method through `channelWritabilityChanged`.
    private func writeMore(context: ChannelHandlerContext) {
        while self.sent < self.total && context.channel.isWritable {
            let offset = self.sent % self.corpus.readableBytes
            let size = min(self.total - self.sent, 64 * 1024, self.corpus.readableBytes - offset)
            self.sent += size
            let chunk = self.corpus.getSlice(at: self.corpus.readerIndex + offset, length: size)!
            context.write(self.wrapOutboundOut(chunk), promise: nil)
            if self.sent == self.total { break }
        }
        context.flush()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = self.unwrapInboundIn(data)
        self.reply.writeBuffer(&buffer)
        if let count = self.reply.getInteger(at: self.reply.readerIndex, as: UInt64.self) { self.done.succeed(count) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.done.fail(LoadGenerator.LoadError(description: "upload connection closed before the sink confirmed"))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.done.fail(error)
        context.close(promise: nil)
    }
}

final class DownloadHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private let total: Int
    private var received = 0
    private let done: EventLoopPromise<Int>

    init(total: Int, done: EventLoopPromise<Int>) {
        self.total = total
        self.done = done
    }

    func channelActive(context: ChannelHandlerContext) {
        var request = context.channel.allocator.buffer(capacity: 8)
        request.writeInteger(UInt64(self.total))
        context.writeAndFlush(self.wrapOutboundOut(request), promise: nil)
    }

    /// Done once every byte arrived (the client closes; a tunnel need not carry the source's close), or when
    /// the connection closes early.
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.received += self.unwrapInboundIn(data).readableBytes
        if self.received >= self.total {
            self.done.succeed(self.received)
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) { self.done.succeed(self.received) }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.done.fail(error)
        context.close(promise: nil)
    }
}

final class PingPongHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Limit {
        case count(Int)
        case until(NIODeadline)
    }

    private let limit: Limit
    private let done: EventLoopPromise<[Double]>
    private var samples: [Double] = []
    private var sentAt = NIODeadline.now()
    private let byte = ByteBuffer(bytes: [0x2A])

    init(limit: Limit, done: EventLoopPromise<[Double]>) {
        self.limit = limit
        self.done = done
    }

    func channelActive(context: ChannelHandlerContext) { self.send(context: context) }

    private func send(context: ChannelHandlerContext) {
        self.sentAt = .now()
        context.writeAndFlush(self.wrapOutboundOut(self.byte), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let now = NIODeadline.now()
        self.samples.append(Double((now - self.sentAt).nanoseconds) / 1e9)
        let finished: Bool =
            switch self.limit {
            case .count(let count): self.samples.count >= count
            case .until(let deadline): now >= deadline
            }
        if finished {
            self.done.succeed(self.samples)
        } else {
            self.send(context: context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.done.fail(LoadGenerator.LoadError(description: "ping-pong connection closed"))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.done.fail(error)
        context.close(promise: nil)
    }
}
