import Foundation
import NIOCore
import NIOPosix

/// A real proxy from its Debian package (squid, tinyproxy, nginx, haproxy), started on a free loopback port with a
/// configuration template from `fixtures/proxies/`, for the tests and the proxy matrix; stopped by its PID.
///
/// Templates name `@PORT@` (the proxy's port), `@UPSTREAM@` (the culvert server's port, for reverse proxies) and
/// `@DIR@` (a temporary directory for its PID, log and spool files, removed by ``stop()``).
public struct RealProxy: Sendable {
    public enum Kind: String, Sendable, CaseIterable {
        case squid, tinyproxy, nginx, haproxy

        /// The Debian package that has it.
        public var package: String { self.rawValue }

        /// Whether it stands in front of the server (reverse) rather than being named as the client's proxy.
        public var isReverse: Bool { self == .nginx || self == .haproxy }

        /// The installed program, if any.
        public var binary: String? {
            ["/usr/sbin/", "/usr/bin/"].map { $0 + self.rawValue }.first { FileManager.default.isExecutableFile(atPath: $0) }
        }

        fileprivate func arguments(configuration: String, directory: String) -> [String] {
            switch self {
            case .squid: ["-N", "-f", configuration]
            case .tinyproxy: ["-d", "-c", configuration]
            case .nginx: ["-c", configuration, "-p", directory, "-e", directory + "/error.log"]
            case .haproxy: ["-db", "-f", configuration]
            }
        }

        fileprivate var logFile: String {
            switch self {
            case .squid: "cache.log"
            case .tinyproxy: "tinyproxy.log"
            case .nginx: "error.log"
            case .haproxy: "output.log"
            }
        }
    }

    public struct NotInstalled: Error, CustomStringConvertible {
        public var kind: Kind
        public var description: String {
            "\(self.kind.rawValue) is not installed: run `apt-get install -y \(self.kind.package)` (scripts/test and scripts/proxy-matrix do it when run as root)"
        }
    }

    public struct DidNotStart: Error, CustomStringConvertible {
        public var kind: Kind
        public var log: String
        public var description: String { "\(self.kind.rawValue) did not start listening; its log:\n\(self.log)" }
    }

    public let kind: Kind
    public let process: ChildProcess
    public let port: Int
    public let directory: String

    /// Starts `kind` with the template at `configuration` plus `extraLines`; `upstreamPort` fills `@UPSTREAM@`, and
    /// `moreUpstreamPorts` fill `@UPSTREAM2@`, `@UPSTREAM3@`, … (a balancer's other servers).
    public static func start(
        _ kind: Kind,
        configuration: String,
        upstreamPort: Int? = nil,
        moreUpstreamPorts: [Int] = [],
        extraLines: [String] = [],
        files: [String: String] = [:]
    ) async throws -> RealProxy {
        guard let binary = kind.binary else { throw NotInstalled(kind: kind) }
        let template = try String(contentsOfFile: configuration, encoding: .utf8)
        var lastLog = ""
        let started = try await Self.startOnFreePort { port -> RealProxy? in
            let directory = FileManager.default.temporaryDirectory
                .appendingPathComponent("culvert-\(kind.rawValue)-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            // Proxies started as root drop to an unprivileged user: their files must stay writable.
            chmod(directory, 0o777)
            var text = template.replacingOccurrences(of: "@PORT@", with: String(port))
            for (index, more) in moreUpstreamPorts.enumerated() {
                text = text.replacingOccurrences(of: "@UPSTREAM\(index + 2)@", with: String(more))
            }
            text = text.replacingOccurrences(of: "@UPSTREAM@", with: String(upstreamPort ?? 0))
            text = text.replacingOccurrences(of: "@DIR@", with: directory) + extraLines.map { $0 + "\n" }.joined()
            // Files the configuration names under @DIR@ (a password file, say), readable by the unprivileged user.
            for (name, contents) in files {
                try contents.write(toFile: directory + "/" + name, atomically: true, encoding: .utf8)
                chmod(directory + "/" + name, 0o644)
            }
            let configurationPath = directory + "/" + URL(fileURLWithPath: configuration).lastPathComponent
            try text.write(toFile: configurationPath, atomically: true, encoding: .utf8)
            let process = try ChildProcess.spawn(
                binary, kind.arguments(configuration: configurationPath, directory: directory),
                outputPath: directory + "/output.log"
            )
            let proxy = RealProxy(kind: kind, process: process, port: port, directory: directory)
            if try await Self.waitForListener(port: port, startedBy: process) { return proxy }
            lastLog = proxy.log
            proxy.stop()
            return nil
        }
        guard let started else { throw DidNotStart(kind: kind, log: lastLog) }
        return started
    }

    /// The proxy's log so far (for a failure's message).
    public var log: String {
        let main = (try? String(contentsOfFile: self.directory + "/" + self.kind.logFile, encoding: .utf8)) ?? ""
        let output = self.kind.logFile == "output.log" ? "" : (try? String(contentsOfFile: self.directory + "/output.log", encoding: .utf8)) ?? ""
        return main + output
    }

    /// Stops the process by its PID (SIGTERM, then SIGKILL) and removes its directory.
    public func stop() {
        self.process.stop()
        try? FileManager.default.removeItem(atPath: self.directory)
    }

    /// The installed version, as the program reports it (e.g. "squid 5.7").
    public static func version(of kind: Kind) -> String? {
        guard let binary = kind.binary else { return nil }
        let output = ChildProcess.run(binary, ["-v"]) ?? ""
        let patterns: [Kind: String] = [
            .squid: #"Version ([0-9][0-9.]*)"#, .tinyproxy: #"tinyproxy ([0-9][0-9.]*)"#,
            .nginx: #"nginx/([0-9][0-9.]*)"#, .haproxy: #"version ([0-9][0-9.]*)"#,
        ]
        guard let regex = try? NSRegularExpression(pattern: patterns[kind]!),
            let match = regex.firstMatch(in: output, range: NSRange(output.startIndex..., in: output)),
            let range = Range(match.range(at: 1), in: output)
        else { return nil }
        return "\(kind.rawValue) \(output[range])"
    }

    /// Waits up to 5 s for something to accept connections on a loopback port while `process` keeps running; false
    /// when it exited instead (e.g. because another process took the port first: then something else may be
    /// listening there, which is why the process must still be running a while after the port answers).
    public static func waitForListener(port: Int, startedBy process: ChildProcess) async throws -> Bool {
        for _ in 0..<200 {
            if let channel = try? await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(host: "127.0.0.1", port: port).get()
            {
                try? await channel.close()
                try await Task.sleep(for: .milliseconds(100))
                return process.isRunning
            }
            guard process.isRunning else { return false }
            try await Task.sleep(for: .milliseconds(25))
        }
        return false
    }

    /// Starts a process on a free port, up to five times when the port was taken in between.
    ///
    /// The ports come from 20000–31999, below Linux's ephemeral range (32768 and up): a port bound with port 0
    /// can then never be the one just chosen for a proxy, which would make the proxy fail to bind (nginx retries for
    /// seconds before it exits) while the caller talks to the wrong listener.
    public static func startOnFreePort<Fixture>(_ attempt: (_ port: Int) async throws -> Fixture?) async throws -> Fixture? {
        for _ in 0..<5 {
            for _ in 0..<50 {
                let port = Int.random(in: 20000..<32000)
                guard let probe = try? await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                    .bind(host: "127.0.0.1", port: port).get()
                else { continue }
                try await probe.close()
                if let fixture = try await attempt(port) { return fixture }
                break
            }
        }
        return nil
    }
}
