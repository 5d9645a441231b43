import Culvert
import CulvertTools
import CulvertTransport
import Foundation
import Logging
import NIOCore
import NIOPosix

/// `culvert bench --negotiation`: how long `auto` takes to get a usable transport, and to know the final one, on
/// paths with the faults of common proxies (injected by the test proxy), in one process on loopback.
struct NegotiationBenchmark {
    let repeats: Int

    func run() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        var logger = Logger(label: "culvert.bench")
        logger.logLevel = .critical
        let server = try await TunnelServer.start(
            configuration: .init(
                listenHost: "127.0.0.1", listenPort: 0, session: SessionConfiguration(token: "bench"), allowlist: Allowlist(entries: [])
            ),
            group: group, logger: logger
        )
        let scenarios: [(String, Set<FaultProxy.Fault>?)] = [
            ("direct", nil),
            ("proxy, no faults", []),
            ("strips Upgrade", [.stripUpgrade]),
            ("101, then nothing", [.nothingAfterUpgrade]),
            ("CONNECT refused + strips Upgrade", [.stripUpgrade, .refuseConnect]),
            ("CONNECT, then nothing + 101, then nothing", [.connectThenNothing, .nothingAfterUpgrade]),
        ]
        print("culvert bench --negotiation: median of \(self.repeats), in one process on loopback")
        print("path                                         first usable   ms     final       ms")
        for (name, faults) in scenarios {
            var proxy: FaultProxy?
            if let faults { proxy = try await FaultProxy.start(configuration: .init(faults: faults), group: group) }
            var firsts: [(TransportKind, Double)] = []
            var finals: [(TransportKind, Double)] = []
            for _ in 0..<max(1, self.repeats) {
                let start = NIODeadline.now()
                var first: (TransportKind, Double)?
                var results: [ProbeResult] = []
                for await result in TransportNegotiator.results(
                    server: ServerEndpoint(host: "127.0.0.1", port: server.localAddress!.port!),
                    options: TransportOptions(proxy: proxy.map { ProxyConfiguration(host: "127.0.0.1", port: $0.port) }, logger: logger),
                    session: SessionConfiguration(token: "bench"),
                    group: group, logger: logger
                ) {
                    results.append(result)
                    if result.works && first == nil {
                        first = (result.transport, Double((NIODeadline.now() - start).nanoseconds) / 1e6)
                    }
                }
                let elapsed = Double((NIODeadline.now() - start).nanoseconds) / 1e6
                if let first { firsts.append(first) }
                if let choice = TransportNegotiator.choice(results) { finals.append((choice, elapsed)) }
            }
            func median(_ values: [(TransportKind, Double)]) -> (String, String) {
                guard !values.isEmpty else { return ("none", "-") }
                let sorted = values.sorted { $0.1 < $1.1 }
                return (sorted[sorted.count / 2].0.rawValue, String(format: "%.0f", sorted[sorted.count / 2].1))
            }
            let (firstKind, firstTime) = median(firsts)
            let (finalKind, finalTime) = median(finals)
            print(
                name.padding(toLength: 45, withPad: " ", startingAt: 0)
                    + firstKind.padding(toLength: 15, withPad: " ", startingAt: 0)
                    + firstTime.padding(toLength: 7, withPad: " ", startingAt: 0)
                    + finalKind.padding(toLength: 12, withPad: " ", startingAt: 0)
                    + finalTime
            )
            try await proxy?.close()
        }
        await server.shutdown(gracePeriod: .zero)
    }
}
