import CulvertTools
import Foundation
import NIOCore
import NIOPosix

/// tinyproxy, from its Debian package, started for a test as a forward proxy on a free loopback port with a
/// configuration from fixtures/proxies/, and stopped by its PID.
struct Tinyproxy {
    let process: ChildProcess
    let port: Int
    let directory: String

    struct NotInstalled: Error, CustomStringConvertible {
        var description: String {
            "tinyproxy is not installed: run `apt-get install -y tinyproxy` (scripts/test does it when run as root)"
        }
    }

    /// Starts tinyproxy with `fixtures/proxies/<configuration>` plus `extraLines`.
    static func start(configuration: String = "tinyproxy-forward.conf", extraLines: [String] = []) async throws -> Tinyproxy {
        guard let binary = ["/usr/bin/tinyproxy", "/usr/sbin/tinyproxy"].first(where: { FileManager.default.isExecutableFile(atPath: $0) })
        else { throw NotInstalled() }
        var lastLog = ""
        let started = try await startOnFreePort { port -> Tinyproxy? in
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("culvert-tinyproxy-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            // tinyproxy drops to `nobody` when started as root: its log and PID files must stay writable.
            chmod(directory, 0o777)
            let template = try String(contentsOfFile: fixturesDirectory() + "/proxies/" + configuration, encoding: .utf8)
            let text = template.replacingOccurrences(of: "@PORT@", with: String(port))
                .replacingOccurrences(of: "@DIR@", with: directory) + extraLines.map { $0 + "\n" }.joined()
            let configPath = directory + "/tinyproxy.conf"
            try text.write(toFile: configPath, atomically: true, encoding: .utf8)
            let process = try ChildProcess.spawn(binary, ["-d", "-c", configPath])
            let proxy = Tinyproxy(process: process, port: port, directory: directory)
            if try await waitForListener(port: port, startedBy: process) { return proxy }
            lastLog = (try? String(contentsOfFile: directory + "/tinyproxy.log", encoding: .utf8)) ?? ""
            proxy.stop()
            return nil
        }
        guard let started else { throw DidNotStart(log: lastLog) }
        return started
    }

    struct DidNotStart: Error, CustomStringConvertible {
        var log: String
        var description: String { "tinyproxy did not start listening; its log:\n\(self.log)" }
    }

    func stop() {
        self.process.stop()
        try? FileManager.default.removeItem(atPath: self.directory)
    }
}

/// The repository's fixtures/ directory.
func fixturesDirectory(file: String = #filePath) -> String {
    URL(fileURLWithPath: file).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("fixtures").path
}
