import ArgumentParser
import Culvert
import CulvertTools
import CulvertTransport
import Dispatch
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// `proxy-matrix`: runs culvert through real proxies (squid, tinyproxy, nginx, haproxy, each with its Debian defaults
/// and one variant), in `auto` and forced to every transport, holds an idle tunnel through each past its idle timeout,
/// and writes docs/compatibility.md. `scripts/proxy-matrix` and the `proxy-matrix` package plugin run it.
@main
struct ProxyMatrixCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy-matrix",
        abstract: "Run culvert through real proxies and write the compatibility report.",
        discussion: "Exit status: 0 when every expectation holds, 1 when one does not (each is printed), 2 for bad arguments."
    )

    @Option(help: "Directory of the proxy configurations.")
    var fixtures = "fixtures/proxies"

    @Option(help: "The report to write (and, with --check, to compare with first).")
    var output = "docs/compatibility.md"

    @Flag(help: "Fail when the new report differs from the existing one in which transports work.")
    var check = false

    @Flag(help: "A proxy that is not installed is a failure, not a skip (the default when CI=true).")
    var requireAll = false

    @Option(help: "Hold every idle tunnel this many seconds instead of each proxy's default timeout plus 10 s.")
    var idleSeconds: Int?

    @Option(help: "Only these proxies (comma-separated: squid,tinyproxy,nginx,haproxy).")
    var only: String?

    @Option(help: "MiB each way per transfer.")
    var mib = 16

    @Option(help: "A file to create when every transfer is done and only the idle holds remain (CI runs the tests meanwhile).")
    var readyFile: String?

    func run() async throws {
        let started = RunningProxies.shared
        Self.stopProxiesOnSignal(started)
        let requireAll = self.requireAll || ProcessInfo.processInfo.environment["CI"] == "true"
        let kinds = try self.only.map { list in
            try list.split(separator: ",").map { name in
                guard let kind = RealProxy.Kind(rawValue: String(name)) else {
                    throw ValidationError("--only: unknown proxy '\(name)' (squid, tinyproxy, nginx, haproxy)")
                }
                return kind
            }
        }
        let setups = ProxySetup.all.filter { kinds?.contains($0.kind) ?? true }
        let previous = try? String(contentsOfFile: self.output, encoding: .utf8)

        var logger = Logger(label: "culvert.proxy-matrix")
        logger.logLevel = .critical
        let group = MultiThreadedEventLoopGroup.singleton
        let echo = try await EchoServer.start(group: group)
        let server = try await TunnelServer.start(
            configuration: .init(
                listenHost: "127.0.0.1", listenPort: 0, session: SessionConfiguration(token: "proxy-matrix"),
                allowlist: Allowlist(entries: [try Allowlist.Entry(parsing: "127.0.0.1:\(echo.port)")])
            ),
            group: group, logger: logger
        )
        let runner = MatrixRunner(serverPort: server.localAddress!.port!, echoPort: echo.port, bytes: self.mib << 20,
                                  group: group, logger: logger)

        var results: [SetupResult] = []
        var idleTunnels: [(index: Int, client: TunnelClient, since: ContinuousClock.Instant, reconnects: Int)] = []
        var missing: [String] = []
        for setup in setups {
            guard let version = RealProxy.version(of: setup.kind) else {
                missing.append("\(setup.kind.rawValue) is not installed (`apt-get install -y \(setup.kind.package)`; scripts/proxy-matrix does it as root)")
                continue
            }
            progress("\(setup.file): starting \(version)")
            let proxy: RealProxy
            do {
                proxy = try await RealProxy.start(
                    setup.kind, configuration: self.fixtures + "/" + setup.file,
                    upstreamPort: setup.kind.isReverse ? server.localAddress!.port! : nil
                )
            } catch {
                var result = SetupResult(setup: setup, version: version)
                result.problems.append("\(setup.file): \(error)")
                results.append(result)
                continue
            }
            started.add(proxy)
            let (result, idleClient) = await runner.run(setup, proxy: proxy, version: version)
            if let idleClient { idleTunnels.append((results.count, idleClient, .now, await MatrixRunner.reconnects(idleClient))) }
            results.append(result)
        }

        if let readyFile = self.readyFile { _ = FileManager.default.createFile(atPath: readyFile, contents: Data()) }
        // The idle holds ran side by side with the later configurations; wait for each to pass its timeout.
        for (index, client, since, reconnectsBefore) in idleTunnels {
            let setup = results[index].setup
            let hold = self.idleSeconds ?? setup.idleTimeoutSeconds + 10
            let remaining = Duration.seconds(hold) - (ContinuousClock.now - since)
            if remaining > .zero {
                progress("\(setup.file): idle tunnel held \(hold) s in all (\(remaining.components.seconds) s to go)")
                try await Task.sleep(for: remaining)
            }
            results[index].idle = await runner.finishIdle(
                client, heldSeconds: Int((ContinuousClock.now - since).components.seconds), reconnectsBefore: reconnectsBefore
            )
            if let idle = results[index].idle, !idle.carriedDataAfter || idle.resumptions > 0 {
                results[index].problems.append(
                    "\(setup.file): the idle \(idle.transport) tunnel \(idle.carriedDataAfter ? "had to reconnect \(idle.resumptions) times" : "carried no data") after \(idle.heldSeconds) s"
                )
            }
        }
        started.stopAll()
        await server.shutdown(gracePeriod: .zero)
        try? await echo.close()

        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withFullDate]
        let report = CompatibilityReport.render(results, date: formatter.string(from: Date()), idleOverride: self.idleSeconds)
        var problems = results.flatMap(\.problems)
        if requireAll { problems += missing } else { for line in missing { progress("skipped: \(line)") } }
        if self.check, let previous {
            let before = CompatibilityReport.worksTable(previous), after = CompatibilityReport.worksTable(report)
            for (file, row) in after.sorted(by: { $0.key < $1.key }) where before[file] != nil && before[file] != row {
                problems.append("\(file): works \(Self.describe(row)) now, the committed report says \(Self.describe(before[file]!))")
            }
            for file in before.keys.sorted() where after[file] == nil && setups.contains(where: { $0.file == file }) {
                problems.append("\(file): in the committed report, not measured now")
            }
        }
        try report.write(toFile: self.output, atomically: true, encoding: .utf8)
        print(report)
        if problems.isEmpty {
            progress("all expectations hold; wrote \(self.output)")
        } else {
            for problem in problems { progress("FAILED: \(problem)") }
            throw ExitCode(1)
        }
    }

    private static func describe(_ row: [TransportKind: Bool]) -> String {
        let working = TransportNegotiator.preference.filter { row[$0] == true }.map(\.rawValue)
        return working.isEmpty ? "nothing" : working.joined(separator: ", ")
    }

    /// On SIGINT or SIGTERM: stop every proxy started so far by its PID, then exit 130.
    private static func stopProxiesOnSignal(_ started: RunningProxies) {
        for signalNumber in [SIGINT, SIGTERM] {
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
            source.setEventHandler {
                progress("interrupted: stopping the proxies")
                started.stopAll()
                Foundation.exit(130)
            }
            source.resume()
            SignalSources.all.append(source)
        }
    }
}

/// The proxies this run started, so that every one is stopped by PID, also on a signal.
final class RunningProxies: Sendable {
    static let shared = RunningProxies()
    private let proxies = NIOLockedValueBox<[RealProxy]>([])

    func add(_ proxy: RealProxy) { self.proxies.withLockedValue { $0.append(proxy) } }

    func stopAll() {
        let all = self.proxies.withLockedValue { proxies in
            defer { proxies.removeAll() }
            return proxies
        }
        for proxy in all { proxy.stop() }
    }
}

/// The signal sources, kept alive for the whole run (set up once, before anything else runs).
private enum SignalSources {
    nonisolated(unsafe) static var all: [any DispatchSourceSignal] = []
}

func progress(_ line: String) {
    FileHandle.standardError.write(Data("proxy-matrix: \(line)\n".utf8))
}
