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
        struct Scenario {
            var name: String
            /// nil: no proxy at all.
            var faults: Set<FaultProxy.Fault>?
            var reverse = false
        }
        let serverPort = server.localAddress!.port!
        let scenarios: [Scenario] = [
            Scenario(name: "direct", faults: nil),
            Scenario(name: "proxy, no faults", faults: []),
            Scenario(name: "strips Upgrade", faults: [.stripUpgrade]),
            Scenario(name: "101, then nothing", faults: [.nothingAfterUpgrade]),
            Scenario(name: "CONNECT refused + strips Upgrade", faults: [.stripUpgrade, .refuseConnect]),
            Scenario(name: "CONNECT, then nothing + 101, then nothing", faults: [.connectThenNothing, .nothingAfterUpgrade]),
            Scenario(name: "buffers responses", faults: [.bufferResponses]),
            Scenario(name: "strips Upgrade, +50 ms each way", faults: [.stripUpgrade, .latency(.milliseconds(50))]),
            Scenario(
                name: "reverse: no Upgrade, buffering, 1 MiB limit",
                faults: [.stripUpgrade, .bufferResponses, .bufferRequestBodies, .limitRequestBodies(bytes: 1 << 20)],
                reverse: true
            ),
        ]
        print("culvert bench --negotiation: median of \(self.repeats), in one process on loopback")
        print("path                                         first usable   ms     final       ms")
        for scenario in scenarios {
            var proxy: FaultProxy?
            if let faults = scenario.faults {
                proxy = try await FaultProxy.start(
                    configuration: .init(upstream: scenario.reverse ? ("127.0.0.1", serverPort) : nil, faults: faults),
                    group: group
                )
            }
            // A reverse proxy is dialled as the server; a forward proxy is named as the proxy.
            let endpoint = ServerEndpoint(host: "127.0.0.1", port: scenario.reverse ? proxy!.port : serverPort)
            let proxyConfiguration = scenario.reverse ? nil : proxy.map { ProxyConfiguration(host: "127.0.0.1", port: $0.port) }
            var firsts: [(TransportKind, Double)] = []
            var finals: [(TransportKind, Double)] = []
            for _ in 0..<max(1, self.repeats) {
                let start = NIODeadline.now()
                var first: (TransportKind, Double)?
                var results: [ProbeResult] = []
                var arrivals: [TransportKind: Double] = [:]
                for await result in TransportNegotiator.results(
                    server: endpoint,
                    options: TransportOptions(proxy: proxyConfiguration, logger: logger),
                    session: SessionConfiguration(token: "bench"),
                    group: group, logger: logger
                ) {
                    let now = Double((NIODeadline.now() - start).nanoseconds) / 1e6
                    results.append(result)
                    arrivals[result.transport] = now
                    if result.works && first == nil { first = (result.transport, now) }
                }
                if let first { firsts.append(first) }
                // `auto` is on its final transport once that one's probe passed and every better one's failed.
                if let choice = TransportNegotiator.choice(results) {
                    let settled = TransportNegotiator.preference.prefix { $0 != choice }.map { arrivals[$0]! } + [arrivals[choice]!]
                    finals.append((choice, settled.max()!))
                }
            }
            func median(_ values: [(TransportKind, Double)]) -> (String, String) {
                guard !values.isEmpty else { return ("none", "-") }
                let sorted = values.sorted { $0.1 < $1.1 }
                return (sorted[sorted.count / 2].0.rawValue, String(format: "%.0f", sorted[sorted.count / 2].1))
            }
            let (firstKind, firstTime) = median(firsts)
            let (finalKind, finalTime) = median(finals)
            print(
                scenario.name.padding(toLength: 45, withPad: " ", startingAt: 0)
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
