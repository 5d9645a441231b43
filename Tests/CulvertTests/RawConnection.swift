import Crypto
import CulvertTools
import Foundation
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

    /// Sends `byteCount` bytes to an echo target, reads them all back, and returns the connection still open.
    static func echoAndStayOpen(port: Int, byteCount: Int, group: any EventLoopGroup) async throws -> any Channel {
        let eventLoop = group.next()
        let echoed = eventLoop.makePromise(of: Void.self)
        let channel = try await ClientBootstrap(group: eventLoop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteCounter(expected: byteCount, reached: echoed))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        try await channel.writeAndFlush(ByteBuffer(repeating: 0x33, count: byteCount))
        try await echoed.futureResult.get()
        return channel
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Sends one HTTP/1.1 request and returns the response (head and a Content-Length body) as text.
    static func exchange(port: Int, request: String, group: any EventLoopGroup) async throws -> String {
        let channel = try await ClientBootstrap(group: group)
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        return try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(ByteBuffer(string: request))
            var received = ""
            for try await buffer in inbound {
                received += String(buffer: buffer)
                guard let headEnd = received.range(of: "\r\n\r\n") else { continue }
                let length = received[..<headEnd.lowerBound].split(separator: "\r\n")
                    .first { $0.lowercased().hasPrefix("content-length:") }
                    .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
                if received.utf8.count - received[..<headEnd.upperBound].utf8.count >= length { break }
            }
            return received
        }
    }

    /// Sends `request`, gives the server a moment to take it, and closes the connection without reading.
    static func sendAndClose(port: Int, request: String, group: any EventLoopGroup) async throws {
        let channel = try await ClientBootstrap(group: group).connect(host: "127.0.0.1", port: port).get()
        try await channel.writeAndFlush(ByteBuffer(string: request))
        try await Task.sleep(for: .milliseconds(5))
        do {
            try await channel.close()
        } catch ChannelError.alreadyClosed {
            // The server closed it first (an answer with `Connection: close`): the connection is gone either way.
        }
    }

    /// A loopback port with nothing listening now, for a listener the test starts later or a connection meant to be
    /// refused (see ``ReservedPort``).
    static func unusedPort(group: any EventLoopGroup) async throws -> Int {
        try ReservedPort.take()
    }
}

enum SHA256Digest {
    static func of(_ bytes: [UInt8]) -> [UInt8] { Array(SHA256.hash(data: bytes)) }
    static func hex(_ bytes: [UInt8]) -> String { TransferClient.hex(Self.of(bytes)) }
}

/// Succeeds `reached` once `expected` bytes have been read; fails it if the connection closes first.
private final class ByteCounter: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    private let expected: Int
    private let reached: EventLoopPromise<Void>
    private var count = 0

    init(expected: Int, reached: EventLoopPromise<Void>) {
        self.expected = expected
        self.reached = reached
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.count += self.unwrapInboundIn(data).readableBytes
        if self.count >= self.expected { self.reached.succeed() }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.reached.fail(RawConnection.Failure(description: "closed after \(self.count) of \(self.expected) bytes"))
    }
}
