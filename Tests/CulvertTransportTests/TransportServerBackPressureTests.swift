@testable import CulvertTransport
import NIOCore
import NIOEmbedded
import Testing

/// The server's connection pipeline stops reading a peer whose answers it cannot write (the peer does not read
/// them: pipelined requests, a ping flood after an upgrade), and reads again once they drain, so what waits for such
/// a peer stays within the channel's write buffer.
@Suite struct TransportServerBackPressureTests {
    /// Counts the reads that reach the head of the pipeline (the socket).
    final class ReadCounter: ChannelOutboundHandler {
        typealias OutboundIn = Any
        var reads = 0
        func read(context: ChannelHandlerContext) {
            self.reads += 1
            context.read()
        }
    }

    @Test func aConnectionThatCannotWriteIsNotRead() throws {
        let channel = EmbeddedChannel()
        defer { _ = try? channel.finish() }
        try TransportServer.configureConnection(
            channel, configuration: .init(host: "127.0.0.1", port: 0),
            registry: HTTPConnectionRegistry(settings: .init()), onConnection: { $0.close() }
        )
        let counter = ReadCounter()
        try channel.pipeline.syncOperations.addHandler(counter, position: .first)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()

        channel.read()
        #expect(counter.reads == 1)
        channel.isWritable = false
        channel.pipeline.fireChannelWritabilityChanged()
        channel.read()
        #expect(counter.reads == 1, "a read went through while the peer was not taking what it is sent")
        channel.isWritable = true
        channel.pipeline.fireChannelWritabilityChanged()
        #expect(counter.reads == 2, "the held read was not issued once the peer could take more")
    }
}
