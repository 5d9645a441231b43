import Crypto
public import NIOCore
import NIOPosix

/// A TCP service on loopback that reads until the client half-closes, then answers `BYTES SHA256HEX\n` and closes.
/// It proves half-close end to end: the reply can only come after the client's FIN, and must still arrive.
public final class DigestServer: Sendable {
    private let channel: any Channel

    public var port: Int { self.channel.localAddress!.port! }

    private init(channel: any Channel) {
        self.channel = channel
    }

    public static func start(host: String = "127.0.0.1", group: any EventLoopGroup) async throws -> DigestServer {
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(DigestHandler())
                }
            }
            .bind(host: host, port: 0)
            .get()
        return DigestServer(channel: channel)
    }

    public func close() async throws {
        try await self.channel.close()
    }
}

final class DigestHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var hasher = SHA256()
    private var count = 0

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = self.unwrapInboundIn(data)
        buffer.withUnsafeReadableBytes { self.hasher.update(bufferPointer: $0) }
        self.count += buffer.readableBytes
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case ChannelEvent.inputClosed = event else { return }
        let reply = "\(self.count) \(TransferClient.hex(self.hasher.finalize()))\n"
        let channel = context.channel
        context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: reply))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
