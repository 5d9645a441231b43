import ArgumentParser
import CulvertTools
import CulvertTransport
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// `culvert bench`: measures the tunnel against the direct path, a socat relay, two chained socat relays and two
/// chained SwiftNIO relays in the same run.
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure throughput, latency and concurrency through the tunnel, next to direct and socat paths.",
        discussion: """
            Starts the targets in this process, and `culvert server`, `culvert client`, socat (Debian package \
            socat) relays and plain SwiftNIO relays (`culvert relay`) as separate processes on loopback. Build \
            with `swift build -c release` first: a debug build's figures mean nothing.
            """
    )

    @Option(help: "Transport to measure.")
    var transport: TransportChoice = .websocket

    @Option(help: "MiB per throughput measurement.")
    var mib: Int = 256

    @Option(help: "Round trips in the ping-pong latency measurement.")
    var pings: Int = 5000

    @Option(help: "Concurrent streams in the round-trip measurement.")
    var streams: Int = 200

    @Option(help: "Seconds of the concurrent round-trip measurement.")
    var seconds: Double = 3

    @Option(help: "Times each measurement is repeated; the best run counts.")
    var repeats: Int = 3

    @Flag(help: "Measure compression instead: ratio and throughput on a text corpus and on random data, with and without --compress, in one process.")
    var compression = false

    @Flag(help: "Measure session resumption instead: for each transport, the time from a cut connection to data flowing again.")
    var resume = false

    @Option(help: "Cuts per transport with --resume.")
    var cuts: Int = 10

    @Flag(help: "Measure negotiation instead: time to the first usable and to the final transport under injected proxy faults.")
    var negotiation = false

    func run() async throws {
        if self.negotiation {
            try await NegotiationBenchmark(repeats: self.repeats).run()
            return
        }
        if self.resume {
            try await ResumeBenchmark(cuts: self.cuts).run()
            return
        }
        if self.compression {
            try await CompressionBenchmark(mib: self.mib, repeats: self.repeats).run()
            return
        }
        let kind = self.transport.resolvedKind()
        guard let socat = findExecutable("socat") else {
            fail("socat is not installed: run `apt-get install -y socat` (the benchmark compares against it)")
        }
        let group = MultiThreadedEventLoopGroup.singleton
        let targets = try await LoadTargets.start(group: group)
        let echo = try await EchoServer.start(group: group)
        let targetPorts = [targets.sinkPort, targets.sourcePort, echo.port]

        let processes = SpawnedProcesses()
        defer { processes.stopAll() }
        // A signal stops the relays and tunnel processes too, instead of leaving them running.
        let signals = SignalWaiter.install()
        Task {
            let signal = await SignalWaiter.wait(signals)
            processes.stopAll()
            Foundation.exit(128 + signal)
        }

        // socat relays, one per target; and two socat relays chained per target, the shape of any tunnel with a
        // client and a server process (the floor for culvert's latency: two relays to wake instead of one).
        var socatPorts: [Int] = []
        var chainedSocatPorts: [Int] = []
        var socatListeners: [Int] = []
        func startSocat(to port: Int) throws -> Int {
            let listen = try freePort()
            processes.add(try ChildProcess.spawn(socat, ["TCP-LISTEN:\(listen),bind=127.0.0.1,fork,reuseaddr,nodelay",
                                                        "TCP:127.0.0.1:\(port),nodelay"]))
            socatListeners.append(listen)
            return listen
        }
        for port in targetPorts {
            socatPorts.append(try startSocat(to: port))
            chainedSocatPorts.append(try startSocat(to: try startSocat(to: port)))
        }
        // Two plain SwiftNIO relays chained per target (`culvert relay`, no tunnel in them): what waking two SwiftNIO
        // processes costs before culvert does any work of its own.
        let me = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        var chainedRelayPorts: [Int] = []
        func startRelay(to port: Int) async throws -> Int {
            let listen = try freePort()
            processes.add(try ChildProcess.spawn(me, ["relay", "--listen", "\(listen)", "--to", "\(port)"]))
            try await waitForPort(listen)
            return listen
        }
        for port in targetPorts {
            chainedRelayPorts.append(try await startRelay(to: try await startRelay(to: port)))
        }
        // The tunnel: server and client processes of this same binary.
        let serverPort = try freePort()
        let token = UUID().uuidString
        var serverArguments = ["server", "--listen", "127.0.0.1:\(serverPort)", "--token", token, "--log-level", "error"]
        for port in targetPorts { serverArguments += ["--allow", "127.0.0.1:\(port)"] }
        processes.add(try ChildProcess.spawn(me, serverArguments))
        try await waitForPort(serverPort)
        var tunnelPorts: [Int] = []
        var clientArguments = ["client", "http://127.0.0.1:\(serverPort)", "--token", token, "--transport", kind.rawValue,
                               "--log-level", "error"]
        for port in targetPorts {
            let local = try freePort()
            tunnelPorts.append(local)
            clientArguments += ["-L", "127.0.0.1:\(local):127.0.0.1:\(port)"]
        }
        processes.add(try ChildProcess.spawn(me, clientArguments))
        for port in socatListeners + tunnelPorts { try await waitForPort(port) }

        var paths: [(String, [Int])] = [("direct", targetPorts), ("socat", socatPorts), ("socat+socat", chainedSocatPorts),
                                        ("nio+nio", chainedRelayPorts), ("culvert", tunnelPorts)]
        // GNU httptunnel (Debian package httptunnel) beside the polling transport: one hts/htc pair per target.
        if kind == .polling, let hts = findExecutable("hts"), let htc = findExecutable("htc") {
            var httptunnelPorts: [Int] = []
            for port in targetPorts {
                let serverPort = try freePort()
                processes.add(try ChildProcess.spawn(hts, ["--no-daemon", "--forward-port", "127.0.0.1:\(port)", "127.0.0.1:\(serverPort)"]))
                try await waitForPort(serverPort)
                let local = try freePort()
                processes.add(try ChildProcess.spawn(htc, ["--no-daemon", "--forward-port", "\(local)", "127.0.0.1:\(serverPort)"]))
                httptunnelPorts.append(local)
            }
            try await Task.sleep(for: .milliseconds(300))
            paths.append(("httptunnel", httptunnelPorts))
        } else if kind == .polling {
            progress("GNU httptunnel (hts/htc) is not installed: `apt-get install -y httptunnel` adds it to the comparison")
        }
        let bytes = self.mib * 1024 * 1024
        var table: [String: [String: Double]] = [:]
        var bestPings: [String: [Double]] = [:]
        // A measurement an optional path failed is not tried again in later rounds.
        var failed: Set<String> = []
        // Rounds go through every path in turn, so that a slow spell of the machine does not fall on one path alone.
        for round in 1...max(1, self.repeats) {
            for (name, ports) in paths {
                // A path that cannot do a measurement (httptunnel carries one connection at a time) shows n/a.
                let required = name != "httptunnel"
                var row = table[name] ?? [:]
                func attempt<T: Sendable>(_ figure: String, _ body: @escaping @Sendable () async throws -> T) async throws -> T? {
                    guard !failed.contains("\(name) \(figure)") else { return nil }
                    progress("round \(round): \(name): \(figure)")
                    let result = try await self.attempt(required: required, body)
                    if result == nil { failed.insert("\(name) \(figure)") }
                    return result
                }
                if let value = try await attempt("upload", {
                    Double(bytes) / 1_048_576 / (try await LoadGenerator.upload(port: ports[0], byteCount: bytes, group: group))
                }) { row["upload"] = max(row["upload"] ?? 0, value) }
                if let value = try await attempt("download", {
                    Double(bytes) / 1_048_576 / (try await LoadGenerator.download(port: ports[1], byteCount: bytes, group: group))
                }) { row["download"] = max(row["download"] ?? 0, value) }
                // The run with the lowest median counts.
                if let samples = try await attempt("ping-pong", {
                    try await LoadGenerator.pingPong(port: ports[2], count: self.pings, group: group).sorted()
                }), !samples.isEmpty {
                    let best = bestPings[name] ?? []
                    if best.isEmpty || samples[samples.count / 2] < best[best.count / 2] {
                        bestPings[name] = samples
                        row["p50"] = samples[samples.count / 2] * 1e6
                        row["p99"] = samples[min(samples.count - 1, samples.count * 99 / 100)] * 1e6
                    }
                }
                if required, let value = try await attempt("\(self.streams) streams", {
                    try await LoadGenerator.concurrentRoundTrips(port: ports[2], streams: self.streams, seconds: self.seconds, group: group)
                }) {
                    row["rtps"] = max(row["rtps"] ?? 0, value)
                }
                table[name] = row
            }
        }

        let names = paths.map(\.0)
        let ratios = ["socat", "socat+socat", "nio+nio"] + (names.contains("httptunnel") ? ["httptunnel"] : [])
        print("culvert bench: transport \(kind), loopback, \(ProcessInfo.processInfo.activeProcessorCount) cores, best of \(self.repeats)")
        print(pad("", 34) + names.map { pad($0, 13) }.joined() + ratios.map { pad("culvert/\($0)", 21) }.joined())
        let rows: [(String, String)] = [
            ("upload", "single stream up, MiB/s"),
            ("download", "single stream down, MiB/s"),
            ("p50", "1-byte ping-pong p50, µs"),
            ("p99", "1-byte ping-pong p99, µs"),
            ("rtps", "\(self.streams) streams, round trips/s"),
        ]
        for (key, label) in rows {
            let tunnel = table["culvert"]?[key]
            var line = pad(label, 34) + names.map { pad(table[$0]?[key].map(format) ?? "n/a", 13) }.joined()
            for reference in ratios {
                let ratio = tunnel.flatMap { tunnel in table[reference]?[key].map { String(format: "%.2f×", tunnel / $0) } }
                line += pad(ratio ?? "n/a", 21)
            }
            while line.hasSuffix(" ") { line.removeLast() }
            print(line)
        }
        await targets.close()
        try? await echo.close()
    }

    /// One measurement, given at most two minutes; a failure of an optional path is reported and yields nil.
    /// A measurement that hangs is left behind (its connection stays open until the benchmark exits).
    private func attempt<T: Sendable>(required: Bool, _ body: @escaping @Sendable () async throws -> T) async throws -> T? {
        do {
            return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
                let resumed = NIOLockedValueBox(false)
                @Sendable func finish(_ result: Result<T, any Error>) {
                    guard resumed.withLockedValue({ let first = !$0; $0 = true; return first }) else { return }
                    continuation.resume(with: result)
                }
                Task {
                    do { finish(.success(try await body())) } catch { finish(.failure(error)) }
                }
                Task {
                    try? await Task.sleep(for: .seconds(120))
                    finish(.failure(CLIError("no result within 120 s")))
                }
            }
        } catch where !required {
            progress("measurement failed: \(error)")
            return nil
        }
    }
}

/// One line of progress on standard error, so that a stuck measurement shows where it is.
private func progress(_ text: String) {
    FileHandle.standardError.write(Data("culvert bench: \(text)\n".utf8))
}

private func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
}

private func format(_ value: Double) -> String {
    value >= 100 ? String(format: "%.0f", value) : String(format: "%.1f", value)
}

private func findExecutable(_ name: String) -> String? {
    let paths = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":")
    return paths.map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
}

/// A free loopback port (bound, then released).
private func freePort() throws -> Int {
    let channel = try ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).wait()
    let port = channel.localAddress!.port!
    try channel.close().wait()
    return port
}

/// Waits until something accepts connections on `port` (up to 15 s).
private func waitForPort(_ port: Int) async throws {
    let deadline = ContinuousClock.now + .seconds(15)
    while ContinuousClock.now < deadline {
        if let channel = try? await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: port).get()
        {
            try? await channel.close()
            return
        }
        try await Task.sleep(for: .milliseconds(50))
    }
    fail("nothing listens on 127.0.0.1:\(port) after 15 s: a benchmark process did not start")
}

/// The benchmark's child processes, stopped by PID when it ends or is interrupted.
private final class SpawnedProcesses: Sendable {
    private let processes = NIOLockedValueBox<[ChildProcess]>([])

    func add(_ process: ChildProcess) {
        self.processes.withLockedValue { $0.append(process) }
    }

    /// Stops every process, the last started first; safe to call more than once.
    func stopAll() {
        let all = self.processes.withLockedValue { processes in
            defer { processes = [] }
            return processes
        }
        for process in all.reversed() { process.stop() }
    }
}
