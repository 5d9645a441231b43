import Foundation
import Testing

/// `--no-session-encryption` from the command line and the config file: one side alone is refused at once with
/// what to change (client and probe), both sides together connect.
extension CommandLineTests {
    @Test func encryptionOffAtTheServerOnlyStopsTheClientAtOnceSayingWhatToChange() throws {
        let port = try self.freePort()
        let config = FileManager.default.temporaryDirectory.appendingPathComponent("culvert-noseal-\(UUID().uuidString).toml").path
        try "no-session-encryption = true\n".write(toFile: config, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: config) }
        let server = try self.startServer(port: port, token: "t", extraArguments: ["--config", config])
        defer { server.terminate(); server.waitUntilExit() }

        let client = try self.run(["client", "http://127.0.0.1:\(port)", "--token", "t", "-L", "0:127.0.0.1:1"])
        #expect(client.status == 1)
        #expect(client.standardError.contains("end-to-end session encryption is on at the client and off at the server"), "\(client.standardError)")
        #expect(client.standardError.contains("--no-session-encryption"))
        #expect(!client.standardError.contains("retrying"))

        let (status, report) = try self.runJSON(["probe", "http://127.0.0.1:\(port)", "--token", "t", "--json"])
        #expect(status == 1)
        let transports = try #require(report["transports"] as? [[String: Any]])
        #expect(transports.map { $0["failure"] as? String } == Array(repeating: "protection_mismatch", count: 4), "\(transports)")

        let (agreeing, agreed) = try self.runJSON(["probe", "http://127.0.0.1:\(port)", "--token", "t", "--no-session-encryption", "--json"])
        #expect(agreeing == 0, "\(agreed)")
    }
}
