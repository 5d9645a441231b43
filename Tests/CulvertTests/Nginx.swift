import CulvertTools
import Foundation
import NIOCore
import NIOPosix

/// nginx, from its Debian package, started for a test as a reverse proxy in front of a culvert server with a
/// configuration from fixtures/proxies/, and stopped by its PID.
struct Nginx {
    let process: ChildProcess
    let port: Int
    let directory: String

    struct NotInstalled: Error, CustomStringConvertible {
        var description: String {
            "nginx is not installed: run `apt-get install -y nginx` (scripts/test does it when run as root)"
        }
    }

    static func start(upstreamPort: Int, configuration: String = "nginx-reverse.conf") async throws -> Nginx {
        guard let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"].first(where: { FileManager.default.isExecutableFile(atPath: $0) })
        else { throw NotInstalled() }
        var lastLog = ""
        let started = try await startOnFreePort { port -> Nginx? in
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("culvert-nginx-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            chmod(directory, 0o777)
            let template = try String(contentsOfFile: fixturesDirectory() + "/proxies/" + configuration, encoding: .utf8)
            let text = template.replacingOccurrences(of: "@PORT@", with: String(port))
                .replacingOccurrences(of: "@UPSTREAM@", with: String(upstreamPort))
                .replacingOccurrences(of: "@DIR@", with: directory)
            let configPath = directory + "/nginx.conf"
            try text.write(toFile: configPath, atomically: true, encoding: .utf8)
            let process = try ChildProcess.spawn(binary, ["-c", configPath, "-p", directory, "-e", directory + "/error.log"])
            let nginx = Nginx(process: process, port: port, directory: directory)
            if try await waitForListener(port: port, startedBy: process) { return nginx }
            lastLog = (try? String(contentsOfFile: directory + "/error.log", encoding: .utf8)) ?? ""
            nginx.stop()
            return nil
        }
        guard let started else { throw DidNotStart(log: lastLog) }
        return started
    }

    struct DidNotStart: Error, CustomStringConvertible {
        var log: String
        var description: String { "nginx did not start listening; its error log:\n\(self.log)" }
    }

    /// nginx's error log so far (for a failing test's message).
    var errorLog: String { (try? String(contentsOfFile: self.directory + "/error.log", encoding: .utf8)) ?? "" }

    func stop() {
        // nginx's master process stops its workers on SIGTERM (fast shutdown).
        self.process.stop()
        try? FileManager.default.removeItem(atPath: self.directory)
    }
}
