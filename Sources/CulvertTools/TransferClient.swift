import Crypto
public import NIOCore
import NIOConcurrencyHelpers
import NIOPosix

/// Pushes bytes through a TCP connection to an echo target and reads them back, hashing both directions.
public enum TransferClient {
    /// What one transfer moved.
    public struct Result: Sendable {
        public var bytesSent: Int
        public var bytesReceived: Int
        public var sentDigest: String
        public var receivedDigest: String
        /// Seconds from connect to the last byte back.
        public var seconds: Double

        public var digestsMatch: Bool { self.bytesSent == self.bytesReceived && self.sentDigest == self.receivedDigest }
    }

    /// What a transfer sends.
    public enum Content: Sendable {
        /// Pseudo-random bytes: incompressible.
        case random
        /// JSON log lines: compressible like real text.
        case text
    }

    /// Sends `byteCount` bytes of `content` to `host:port`, half-closes, and reads until the echo's EOF.
    /// `onFirstEcho` is called when the first echoed bytes arrive (the data flows end to end).
    public static func echoTransfer(
        host: String,
        port: Int,
        byteCount: Int,
        seed: UInt64 = 1,
        content: Content = .random,
        chunkSize: Int = 64 * 1024,
        onFirstEcho: (@Sendable () -> Void)? = nil,
        group: any EventLoopGroup
    ) async throws -> Result {
        let start = ContinuousClock.now
        let channel = try await ClientBootstrap(group: group)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(
                        wrappingChannelSynchronously: channel,
                        configuration: .init(isOutboundHalfClosureEnabled: true)
                    )
                }
            }
        // How far it got, for the error when the connection fails midway (which side gave up, and when).
        let progress = NIOLockedValueBox((sent: 0, received: 0))
        do {
            return try await channel.executeThenClose { inbound, outbound in
                async let sent: (Int, String) = {
                    var random = PatternGenerator(seed: seed)
                    var text = TextGenerator(seed: seed)
                    var hasher = SHA256()
                    var remaining = byteCount
                    while remaining > 0 {
                        let count = min(chunkSize, remaining)
                        let bytes = content == .text ? text.next(count) : random.next(count)
                        hasher.update(data: bytes)
                        try await outbound.write(ByteBuffer(bytes: bytes))
                        remaining -= bytes.count
                        progress.withLockedValue { $0.sent += bytes.count }
                    }
                    outbound.finish()
                    return (byteCount, hex(hasher.finalize()))
                }()
                var hasher = SHA256()
                var received = 0
                for try await buffer in inbound {
                    if received == 0 { onFirstEcho?() }
                    buffer.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) }
                    received += buffer.readableBytes
                    progress.withLockedValue { $0.received += buffer.readableBytes }
                }
                let (sentCount, sentDigest) = try await sent
                return Result(
                    bytesSent: sentCount,
                    bytesReceived: received,
                    sentDigest: sentDigest,
                    receivedDigest: hex(hasher.finalize()),
                    seconds: (ContinuousClock.now - start).seconds
                )
            }
        } catch {
            let (sent, received) = progress.withLockedValue { $0 }
            throw TransferFailure(description: "the echo transfer to \(host):\(port) failed after \(sent) of \(byteCount) bytes sent and \(received) received: \(error)")
        }
    }

    public static func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
        digest.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }
}

extension Duration {
    /// The duration in seconds as a Double.
    public var seconds: Double {
        let (seconds, attoseconds) = self.components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}

/// An echo transfer that failed midway, with how far it got.
public struct TransferFailure: Error, CustomStringConvertible {
    public let description: String
}
