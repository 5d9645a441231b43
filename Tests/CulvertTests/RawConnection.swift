import Crypto
import NIOCore
import NIOPosix

/// Plain TCP helpers for tests that need control over reading and half-closing.
enum RawConnection {
    /// Connects with auto-read off and never reads.
    static func connectWithoutReading(port: Int, group: any EventLoopGroup) async throws -> any Channel {
        try await ClientBootstrap(group: group)
            .channelOption(.autoRead, value: false)
            .connect(host: "127.0.0.1", port: port)
            .get()
    }

    /// Sends `bytes`, half-closes, and returns everything received until EOF.
    static func sendThenHalfCloseAndReadAll(port: Int, bytes: [UInt8], group: any EventLoopGroup) async throws -> [UInt8] {
        let channel = try await ClientBootstrap(group: group)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(
                        wrappingChannelSynchronously: channel,
                        configuration: .init(isOutboundHalfClosureEnabled: true)
                    )
                }
            }
        return try await channel.executeThenClose { inbound, outbound in
            try? await outbound.write(ByteBuffer(bytes: bytes))
            outbound.finish()
            var received: [UInt8] = []
            do {
                for try await buffer in inbound { received += buffer.readableBytesView }
            } catch {
                // A reset connection ends the read; what arrived is what counts.
            }
            return received
        }
    }

    /// A loopback port with nothing listening (bound and released).
    static func unusedPort(group: any EventLoopGroup) async throws -> Int {
        let channel = try await ServerBootstrap(group: group).bind(host: "127.0.0.1", port: 0).get()
        let port = channel.localAddress!.port!
        try await channel.close()
        return port
    }
}

enum SHA256Digest {
    static func of(_ bytes: [UInt8]) -> [UInt8] { Array(SHA256.hash(data: bytes)) }
}
