import Foundation

/// dnsmasq (Debian's dnsmasq-base) as a DNS server on a loopback port, with `fixtures/targets/dnsmasq.conf`: every
/// name under `culvert.test` is 10.1.2.3, and `big.culvert.test` has a TXT record long enough to need several
/// packets' worth of answer. The UDP target of the UDP forwarding tests; stopped by its PID.
public struct ThrowawayDNSServer: Sendable {
    public static let dnsmasqPath = "/usr/sbin/dnsmasq"

    public let process: ChildProcess
    public let port: Int
    public let directory: String

    /// Starts dnsmasq on `port` with the template at `configuration`.
    public static func start(port: Int, configuration: String) async throws -> ThrowawayDNSServer {
        guard FileManager.default.isExecutableFile(atPath: Self.dnsmasqPath) else {
            throw ChildProcess.SpawnError(description: "dnsmasq is not installed (apt-get install -y dnsmasq-base)")
        }
        let directory = NSTemporaryDirectory() + "culvert-dnsmasq-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        chmod(directory, 0o777)
        let text = try String(contentsOfFile: configuration, encoding: .utf8)
            .replacingOccurrences(of: "@PORT@", with: String(port))
            .replacingOccurrences(of: "@DIR@", with: directory)
            .replacingOccurrences(of: "@USER@", with: NSUserName())
            .replacingOccurrences(of: "@TXT@", with: String(repeating: "culvert", count: 30))
        try text.write(toFile: "\(directory)/dnsmasq.conf", atomically: true, encoding: .utf8)
        let process = try ChildProcess.spawn(
            Self.dnsmasqPath, ["--keep-in-foreground", "--conf-file=\(directory)/dnsmasq.conf"], outputPath: "\(directory)/output.log"
        )
        let server = ThrowawayDNSServer(process: process, port: port, directory: directory)
        // dnsmasq answers DNS over TCP on the same port: that it accepts a connection says it is up.
        guard try await RealProxy.waitForListener(port: port, startedBy: process) else {
            let log = (try? String(contentsOfFile: "\(directory)/output.log", encoding: .utf8)) ?? ""
            server.stop()
            throw ChildProcess.SpawnError(description: "dnsmasq did not start on 127.0.0.1:\(port): \(log)")
        }
        return server
    }

    /// Stops dnsmasq by its PID and removes its directory.
    public func stop() {
        self.process.stop()
        try? FileManager.default.removeItem(atPath: self.directory)
    }
}
