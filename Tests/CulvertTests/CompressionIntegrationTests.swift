import Culvert
import CulvertTools
import NIOCore
import Testing

/// Compression end to end over loopback: `--compress` on the client, the server agreeing (or not).
@Suite(.serialized, .timeLimit(.minutes(2))) struct CompressionIntegrationTests {
    let group = TunnelHarness.group

    /// Text goes through intact and at least 3:1 smaller on the wire.
    @Test func textIsCompressedAtLeastThreeToOne() async throws {
        try await TunnelHarness.withEchoTunnel(compress: true) { client, port in
            #expect(try await client.session.snapshot().compressionEnabled)
            let result = try await TransferClient.echoTransfer(
                host: "127.0.0.1", port: port, byteCount: 2 << 20, content: .text, group: self.group
            )
            #expect(result.digestsMatch)
            let stats = try await client.session.snapshot().statistics
            #expect(stats.compressedFramesSent > 0)
            #expect(
                stats.payloadBytesOnWireSent * 3 <= stats.bytesSent,
                "ratio \(Double(stats.bytesSent) / Double(stats.payloadBytesOnWireSent))"
            )
        }
    }

    /// Random (incompressible) data goes through intact, and the stream soon stops compressing it.
    @Test func incompressibleDataStopsBeingCompressed() async throws {
        try await TunnelHarness.withEchoTunnel(compress: true) { client, port in
            let result = try await TransferClient.echoTransfer(
                host: "127.0.0.1", port: port, byteCount: 2 << 20, content: .random, group: self.group
            )
            #expect(result.digestsMatch)
            let stats = try await client.session.snapshot().statistics
            #expect(
                stats.rawFramesSent > 4 * stats.compressedFramesSent,
                "\(stats.compressedFramesSent) compressed, \(stats.rawFramesSent) raw"
            )
        }
    }

    /// Many streams with different data at once (text and random mixed), each with its own contexts, all intact.
    @Test func manyStreamsCompressIndependently() async throws {
        try await TunnelHarness.withEchoTunnel(compress: true) { _, port in
            let results = try await withThrowingTaskGroup(of: TransferClient.Result.self) { tasks in
                for index in 0..<24 {
                    tasks.addTask {
                        try await TransferClient.echoTransfer(
                            host: "127.0.0.1", port: port, byteCount: 512 * 1024 + index * 997, seed: UInt64(index + 1),
                            content: index % 3 == 0 ? .random : .text, group: self.group
                        )
                    }
                }
                var results: [TransferClient.Result] = []
                for try await result in tasks { results.append(result) }
                return results
            }
            #expect(results.count == 24)
            #expect(results.allSatisfy { $0.digestsMatch })
        }
    }

    /// A server started without compression turns the client's request down: the session runs uncompressed.
    @Test func serverThatRefusesCompressionGivesAnUncompressedSession() async throws {
        try await TunnelHarness.withEchoTunnel(compress: true, serverCompression: false) { client, port in
            #expect(!(try await client.session.snapshot()).compressionEnabled)
            let result = try await TransferClient.echoTransfer(
                host: "127.0.0.1", port: port, byteCount: 1024 * 1024, content: .text, group: self.group
            )
            #expect(result.digestsMatch)
            #expect(try await client.session.snapshot().statistics.compressedFramesSent == 0)
        }
    }
}
