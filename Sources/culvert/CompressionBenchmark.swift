import Culvert
import CulvertCore
import CulvertTools
import CulvertTransport
import Foundation
import Logging
import NIOCore
import NIOPosix

/// `culvert bench --compression`: uploads a text corpus (JSON log lines) and random data through an in-process
/// tunnel with and without compression, and reports throughput and the ratio of payload to wire bytes.
struct CompressionBenchmark {
    let mib: Int
    let repeats: Int

    func run() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        var logger = Logger(label: "culvert.bench")
        logger.logLevel = .error
        let targets = try await LoadTargets.start(group: group)
        var textGenerator = TextGenerator(seed: 1)
        var randomGenerator = PatternGenerator(seed: 1)
        let corpora: [(String, ByteBuffer)] = [
            ("text (JSON logs)", ByteBuffer(bytes: textGenerator.next(8 * 1024 * 1024))),
            ("random", ByteBuffer(bytes: randomGenerator.next(8 * 1024 * 1024))),
        ]
        let server = try await TunnelServer.start(
            configuration: .init(
                listenHost: "127.0.0.1",
                listenPort: 0,
                session: SessionConfiguration(token: "bench", compression: CompressionSettings(enabled: true)),
                allowlist: Allowlist(entries: [try Allowlist.Entry(parsing: "127.0.0.1:\(targets.sinkPort)")])
            ),
            group: group,
            logger: logger
        )
        let bytes = self.mib * 1024 * 1024
        print("culvert bench --compression: \(self.mib) MiB upload per run, in one process, best of \(self.repeats)")
        print("corpus              compress   MiB/s    payload/wire   vs. uncompressed")
        for (name, corpus) in corpora {
            var uncompressedRate = 0.0
            for compress in [false, true] {
                let client = try await TunnelClient.connect(
                    configuration: .init(
                        server: ServerEndpoint(host: "127.0.0.1", port: server.localAddress!.port!),
                        session: SessionConfiguration(token: "bench", compression: CompressionSettings(enabled: compress)),
                        forwards: [ForwardSpec(bindPort: 0, target: .init(host: "127.0.0.1", port: targets.sinkPort))]
                    ),
                    group: group,
                    logger: logger
                )
                let port = client.listenerAddresses[0].port!
                var best = 0.0
                for _ in 0..<max(1, self.repeats) {
                    let seconds = try await LoadGenerator.upload(port: port, byteCount: bytes, corpus: corpus, group: group)
                    best = max(best, Double(bytes) / 1_048_576 / seconds)
                }
                let stats = try await client.session.snapshot().statistics
                let ratio = Double(stats.bytesSent) / Double(max(1, stats.payloadBytesOnWireSent))
                if !compress { uncompressedRate = best }
                let relative = compress ? String(format: "%.2f×", best / uncompressedRate) : "-"
                print(
                    name.padding(toLength: 20, withPad: " ", startingAt: 0)
                        + (compress ? "on " : "off").padding(toLength: 11, withPad: " ", startingAt: 0)
                        + String(format: "%-9.0f", best)
                        + String(format: "%.2f:1", ratio).padding(toLength: 15, withPad: " ", startingAt: 0)
                        + relative
                )
                await client.shutdown(gracePeriod: .milliseconds(200))
            }
        }
        await server.shutdown(gracePeriod: .milliseconds(200))
        await targets.close()
    }
}
