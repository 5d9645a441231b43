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

    @Option(help: "Also measure culvert, nio+nio and ssh -L with this many idle streams open: the 1-byte round trip beside them and the processes' resident memory (0: skip).")
    var idleStreams: Int = 0

    @Option(help: "Also open and close this many streams through culvert and report the processes' resident memory before and after (0: skip).")
    var churn: Int = 0

    @Option(help: "Run the tunnel's server and client from this culvert binary instead of this one.")
    var tunnelBinary: String?

    @Option(help: "Also run a tunnel from this (earlier) culvert binary, as the path \"before\", to compare two builds in one run.")
    var compareBinary: String?

    @Flag(inversion: .prefixedNo, help: "Also run the tunnel with end-to-end session encryption off on both sides, as the path \"unsealed\", to show what the protection costs.")
    var unsealedPath = true

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
        // Every process of the SwiftNIO paths counts its heap allocations (an LD_PRELOAD library built here).
        let scratch = NSTemporaryDirectory() + "culvert-bench-\(getpid())"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let counterLibrary = AllocationCounterLibrary.build(in: scratch)
        if counterLibrary == nil { benchProgress("no C compiler (cc): allocations are not counted") }
        var counterPaths: [String: [String]] = [:]
        func counted(_ path: String, name: String) -> [String: String] {
            guard let counterLibrary else { return [:] }
            // One file per process of each path (paths share process names: every tunnel has a server).
            let counter = "\(scratch)/\(path.filter(\.isLetter))-\(name)-\(counterPaths[path, default: []].count).count"
            counterPaths[path, default: []].append(counter)
            return AllocationCounterLibrary.environment(library: counterLibrary, counterPath: counter)
        }
        var pids: [String: [pid_t]] = [:]
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
            _ = try processes.spawn(socat, ["TCP-LISTEN:\(listen),bind=127.0.0.1,fork,reuseaddr,nodelay", "TCP:127.0.0.1:\(port),nodelay"])
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
            let relay = try processes.spawn(me, ["relay", "--listen", "\(listen)", "--to", "\(port)"], environment: counted("nio+nio", name: "relay"))
            pids["nio+nio", default: []].append(relay.pid)
            try await waitUntilListening(listen)
            return listen
        }
        // Idle streams need a target process of their own (their descriptors would not fit beside the others').
        var idleEchoPort: Int?
        if self.idleStreams > 0 {
            let port = try freePort()
            _ = try processes.spawn(me, ["relay", "--listen", "\(port)", "--echo"])
            try await waitUntilListening(port)
            idleEchoPort = port
        }
        let tunnelTargets = targetPorts + (idleEchoPort.map { [$0] } ?? [])
        // The bare relays carry the idle streams too: the floor for a round trip beside them.
        for port in tunnelTargets {
            chainedRelayPorts.append(try await startRelay(to: try await startRelay(to: port)))
        }
        // The tunnel: server and client processes of this same binary (or of --tunnel-binary), and with
        // --compare-binary a second tunnel from that build beside it, as the path "before".
        let token = UUID().uuidString
        func startTunnel(binary: String, path: String, extraArguments: [String] = []) async throws -> [Int] {
            let serverPort = try freePort()
            // Room for the idle streams (a session takes 4,096 streams by default).
            let streamLimit = self.idleStreams > 4000 ? ["--max-streams", "\(self.idleStreams + 256)"] : []
            var serverArguments = ["server", "--listen", "127.0.0.1:\(serverPort)", "--token", token, "--log-level", "error"]
                + streamLimit + extraArguments
            for port in tunnelTargets { serverArguments += ["--allow", "127.0.0.1:\(port)"] }
            let server = try processes.spawn(binary, serverArguments, environment: counted(path, name: "server"))
            try await waitUntilListening(serverPort)
            var ports: [Int] = []
            var clientArguments = ["client", "http://127.0.0.1:\(serverPort)", "--token", token, "--transport", kind.rawValue,
                                   "--log-level", "error"] + streamLimit + extraArguments
            for port in tunnelTargets {
                let local = try freePort()
                ports.append(local)
                clientArguments += ["-L", "127.0.0.1:\(local):127.0.0.1:\(port)"]
            }
            let client = try processes.spawn(binary, clientArguments, environment: counted(path, name: "client"))
            pids[path] = [server.pid, client.pid]
            for port in ports { try await waitUntilListening(port) }
            return ports
        }
        let tunnelPorts = try await startTunnel(binary: self.tunnelBinary ?? me, path: "culvert")
        for port in socatListeners { try await waitUntilListening(port) }

        var paths: [(String, [Int])] = [("direct", targetPorts), ("socat", socatPorts), ("socat+socat", chainedSocatPorts),
                                        ("nio+nio", chainedRelayPorts), ("culvert", tunnelPorts)]
        if let compareBinary = self.compareBinary {
            paths.insert(("before", try await startTunnel(binary: compareBinary, path: "before")), at: paths.count - 1)
        }
        // The same tunnel with end-to-end encryption off on both sides: what the protection costs.
        if self.unsealedPath {
            let unsealed = try await startTunnel(binary: self.tunnelBinary ?? me, path: "unsealed", extraArguments: ["--no-session-encryption"])
            paths.insert(("unsealed", unsealed), at: paths.count - 1)
        }
        // ssh -L, the tunnel most people use today (OpenSSH, aes128-gcm), beside culvert.
        let ssh = try await SSHReference.start(targets: tunnelTargets, freePort: freePort)
        if let ssh {
            for process in ssh.processes { processes.add(process) }
            paths.insert(("ssh -L", ssh.ports), at: paths.count - 1)
        }
        let meters = pids.mapValues { ProcessMeter(pids: $0, counterPaths: []) }
            .merging(counterPaths.mapValues { ProcessMeter(pids: [], counterPaths: $0) }) { cpu, allocations in
                ProcessMeter(pids: cpu.pids, counterPaths: allocations.counterPaths)
            }
        // GNU httptunnel (Debian package httptunnel) beside the polling transport: one hts/htc pair per target.
        if kind == .polling, let hts = findExecutable("hts"), let htc = findExecutable("htc") {
            var httptunnelPorts: [Int] = []
            for port in targetPorts {
                let serverPort = try freePort()
                _ = try processes.spawn(hts, ["--no-daemon", "--forward-port", "127.0.0.1:\(port)", "127.0.0.1:\(serverPort)"])
                try await waitUntilListening(serverPort)
                let local = try freePort()
                _ = try processes.spawn(htc, ["--no-daemon", "--forward-port", "\(local)", "127.0.0.1:\(serverPort)"])
                httptunnelPorts.append(local)
            }
            try await Task.sleep(for: .milliseconds(300))
            paths.append(("httptunnel", httptunnelPorts))
        } else if kind == .polling {
            benchProgress("GNU httptunnel (hts/htc) is not installed: `apt-get install -y httptunnel` adds it to the comparison")
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
                    benchProgress("round \(round): \(name): \(figure)")
                    let result = try await self.attempt(required: required, body)
                    if result == nil { failed.insert("\(name) \(figure)") }
                    return result
                }
                // CPU per MiB of the path's processes over each transfer (the lowest of the rounds): steadier than the
                // throughput, which moves with whatever else the VM runs.
                func cpuPerMiB(since start: ProcessMeter.Sample?) -> Double? {
                    guard let start, let end = meters[name]?.sample() else { return nil }
                    return (end.cpuSeconds - start.cpuSeconds) / Double(self.mib) * 1e6
                }
                let uploadStart = meters[name]?.sample()
                if let value = try await attempt("upload", {
                    Double(bytes) / 1_048_576 / (try await LoadGenerator.upload(port: ports[0], byteCount: bytes, group: group))
                }) {
                    row["upload"] = max(row["upload"] ?? 0, value)
                    if let cpu = cpuPerMiB(since: uploadStart) { row["cpuUp"] = min(row["cpuUp"] ?? .infinity, cpu) }
                }
                let downloadStart = meters[name]?.sample()
                if let value = try await attempt("download", {
                    Double(bytes) / 1_048_576 / (try await LoadGenerator.download(port: ports[1], byteCount: bytes, group: group))
                }) {
                    row["download"] = max(row["download"] ?? 0, value)
                    if let cpu = cpuPerMiB(since: downloadStart) { row["cpuDown"] = min(row["cpuDown"] ?? .infinity, cpu) }
                }
                // The run with the lowest median counts; CPU and allocations per round trip of the processes that make
                // the path, over the whole run (the lowest of the rounds).
                let before = meters[name]?.sample()
                if let samples = try await attempt("ping-pong", {
                    try await LoadGenerator.pingPong(port: ports[2], count: self.pings, group: group).sorted()
                }), !samples.isEmpty {
                    if let before, let after = meters[name]?.sample() {
                        let cpu = (after.cpuSeconds - before.cpuSeconds) / Double(samples.count) * 1e6
                        row["cpu"] = min(row["cpu"] ?? .infinity, cpu)
                        if let first = before.allocations, let last = after.allocations {
                            row["allocs"] = min(row["allocs"] ?? .infinity, Double(last - first) / Double(samples.count))
                        }
                    }
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
        let ratios = ["socat", "socat+socat", "nio+nio"] + (names.contains("ssh -L") ? ["ssh -L"] : [])
            + (names.contains("before") ? ["before"] : [])
            + (names.contains("unsealed") ? ["unsealed"] : [])
            + (names.contains("httptunnel") ? ["httptunnel"] : [])
        print("culvert bench: transport \(kind), loopback, \(ProcessInfo.processInfo.activeProcessorCount) cores, best of \(self.repeats)")
        print(pad("", 34) + names.map { pad($0, 13) }.joined() + ratios.map { pad("culvert/\($0)", 21) }.joined())
        let rows: [(String, String)] = [
            ("upload", "single stream up, MiB/s"),
            ("download", "single stream down, MiB/s"),
            ("p50", "1-byte ping-pong p50, µs"),
            ("p99", "1-byte ping-pong p99, µs"),
            ("rtps", "\(self.streams) streams, round trips/s"),
            ("cpuUp", "CPU per MiB up, µs"),
            ("cpuDown", "CPU per MiB down, µs"),
            ("cpu", "CPU per round trip, µs"),
            ("allocs", "allocations per round trip"),
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
        // The paths that also forward to the idle-stream target (its port is each one's fourth).
        let tunnels = paths.filter { ["culvert", "before", "ssh -L"].contains($0.0) }
        if idleEchoPort != nil {
            let crowdedPaths = paths.filter { $0.0 == "nio+nio" } + tunnels
            await self.measureIdleStreams(
                crowdedPaths.map { (name: $0.0, idlePort: $0.1[3], pingPort: $0.1[2], pids: pids[$0.0] ?? ssh?.processes.map(\.pid) ?? []) },
                group: group
            )
        }
        if self.churn > 0 {
            for (name, ports) in tunnels where name != "ssh -L" {
                guard let meter = meters[name] else { continue }
                let before = meter.sample().residentBytes
                try await LoadGenerator.churn(port: ports[2], count: self.churn, group: group)
                let after = meter.sample().residentBytes
                print("\(name): \(self.churn) streams opened and closed: client+server resident \(before >> 20) MiB before, \(after >> 20) MiB after")
            }
        }
        await targets.close()
        try? await echo.close()
    }

    /// For each path: the 1-byte round trip p50 with no idle streams, then with ``idleStreams`` open and idle, and
    /// the resident memory of the path's processes with them open.
    private func measureIdleStreams(
        _ paths: [(name: String, idlePort: Int, pingPort: Int, pids: [pid_t])], group: any EventLoopGroup
    ) async {
        let pings = min(self.pings, 2000)
        // A relay holds two descriptors per stream (its client's and its target's); it raises its limit as far as
        // this process can, so the same raise here says what it will have.
        let descriptors = RelayCommand.raiseDescriptorLimit()
        for (name, idlePort, pingPort, pids) in paths {
            // OpenSSH opens forwarded channels one by one, slower with every open one: 10,000 take many minutes.
            if name == "ssh -L" && self.idleStreams > 2000 {
                print("ssh -L: not measured with \(self.idleStreams) idle streams (OpenSSH takes minutes to open that many channels)")
                continue
            }
            if name == "nio+nio", 2 * self.idleStreams + 64 > descriptors {
                print(
                    "nio+nio: not measured with \(self.idleStreams) idle streams (each relay holds two descriptors per stream, "
                        + "\(2 * self.idleStreams), and may have only \(descriptors) here: raise the hard limit, `ulimit -Hn`)"
                )
                continue
            }
            do {
                try await self.measureIdleStreams(name: name, idlePort: idlePort, pingPort: pingPort, pids: pids, pings: pings, group: group)
            } catch {
                print("\(name): with \(self.idleStreams) idle streams: failed: \(error)")
            }
        }
    }

    private func measureIdleStreams(
        name: String, idlePort: Int, pingPort: Int, pids: [pid_t], pings: Int, group: any EventLoopGroup
    ) async throws {
        let meter = ProcessMeter(pids: pids, counterPaths: [])
        benchProgress("\(name): round trips with no idle streams")
        let quiet = try await LoadGenerator.pingPong(port: pingPort, count: pings, group: group).sorted()
        let quietMemory = meter.sample().residentBytes
        benchProgress("\(name): opening \(self.idleStreams) idle streams")
        let idle = try await LoadGenerator.openIdleConnections(port: idlePort, count: self.idleStreams, group: group)
        let crowded: [Double]
        do {
            crowded = try await LoadGenerator.pingPong(port: pingPort, count: pings, group: group).sorted()
        } catch {
            for channel in idle { channel.close(promise: nil) }
            throw error
        }
        let crowdedMemory = meter.sample().residentBytes
        let (p50Quiet, p50Crowded) = (quiet[quiet.count / 2] * 1e6, crowded[crowded.count / 2] * 1e6)
        print(
            "\(name): 1-byte p50 \(format(p50Quiet)) µs with no idle streams, \(format(p50Crowded)) µs with \(self.idleStreams) (\(String(format: "%.2f×", p50Crowded / p50Quiet))); resident \(quietMemory >> 20) MiB → \(crowdedMemory >> 20) MiB"
        )
        for channel in idle { channel.close(promise: nil) }
        for channel in idle { try? await channel.closeFuture.get() }
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
            benchProgress("measurement failed: \(error)")
            return nil
        }
    }
}

/// One line of progress on standard error, so that a stuck measurement shows where it is.
func benchProgress(_ text: String) {
    FileHandle.standardError.write(Data("culvert bench: \(text)\n".utf8))
}

private func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
}

private func format(_ value: Double) -> String {
    value >= 100 ? String(format: "%.0f", value) : String(format: "%.1f", value)
}

func findExecutable(_ name: String) -> String? {
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
func waitUntilListening(_ port: Int) async throws {
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

/// The benchmark's child processes, stopped by PID when it ends or is interrupted. A process spawned while it stops
/// (a signal came while a path was starting) is stopped at once instead of being left running.
private final class SpawnedProcesses: Sendable {
    private let state = NIOLockedValueBox<(processes: [ChildProcess], stopping: Bool)>(([], false))

    /// Spawns a process and keeps it, in one step under the lock, so that ``stopAll()`` stops it whenever it runs.
    func spawn(_ path: String, _ arguments: [String], environment: [String: String] = [:]) throws -> ChildProcess {
        let (process, late) = try self.state.withLockedValue { state in
            let process = try ChildProcess.spawn(path, arguments, environment: environment)
            if !state.stopping { state.processes.append(process) }
            return (process, state.stopping)
        }
        if late { process.stop() }
        return process
    }

    /// Keeps a process spawned elsewhere (ssh -L's); one that comes after ``stopAll()`` is stopped at once.
    func add(_ process: ChildProcess) {
        let late = self.state.withLockedValue { state in
            if !state.stopping { state.processes.append(process) }
            return state.stopping
        }
        if late { process.stop() }
    }

    /// Stops every process, the last started first; safe to call more than once.
    func stopAll() {
        let all = self.state.withLockedValue { state in
            state.stopping = true
            defer { state.processes = [] }
            return state.processes
        }
        for process in all.reversed() { process.stop() }
    }
}
