import CulvertTools
import Foundation
import NIOCore
import NIOPosix
import Testing

/// `culvert server --users` and `--config` as an operator runs them: files refused with their line and key,
/// SIGHUP reloading them, and a user's session limit with a client that was killed.
extension CommandLineTests {
    /// A scratch directory for one test's files, removed at the end.
    struct ScratchDirectory {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("culvert-users-\(UUID().uuidString)").path

        init() throws { try FileManager.default.createDirectory(atPath: self.path, withIntermediateDirectories: true) }

        func write(_ name: String, _ text: String) throws -> String {
            let file = "\(self.path)/\(name)"
            try text.write(toFile: file, atomically: true, encoding: .utf8)
            return file
        }

        func remove() { try? FileManager.default.removeItem(atPath: self.path) }
    }

    @Test func aConfigFileWithABadValueIsRefusedWithItsLineAndKey() throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let users = try scratch.write("users.toml", "[users.alice]\ntoken = \"a\"\nmax-sessions = 0\n")
        let config = try scratch.write("server.toml", "listen = \"127.0.0.1:1\"\nusers = \"\(users)\"\nmax-sessions = \"many\"\n")
        let badValue = try self.run(["server", "--config", config])
        #expect(badValue.status == 2)
        #expect(badValue.standardError.contains("server.toml line 3, key max-sessions:"), "\(badValue.standardError)")
        // The command line wins over the file: with a good --max-sessions, the users file's mistake is next.
        let badUsers = try self.run(["server", "--config", config, "--max-sessions", "5"])
        #expect(badUsers.status == 2)
        #expect(badUsers.standardError.contains("users.toml line 3, key users.alice.max-sessions: must be 1 or more"), "\(badUsers.standardError)")
    }

    /// SIGHUP re-reads the users file: a file that does not parse is refused and the rules in force stay; a file
    /// without a user refuses that user's new sessions while another user's open session goes on moving data.
    @Test func sighupReloadsTheUsersFileAndABrokenFileKeepsTheRulesInForce() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let echo = try await EchoServer.start(group: group)
        let serverPort = try await RawConnection.unusedPort(group: group)
        let bobsPort = try await RawConnection.unusedPort(group: group)
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let allow = "allow = [\"127.0.0.1:\(echo.port)\"]"
        let bothUsers = "[users.alice]\ntoken = \"alices\"\n\(allow)\n[users.bob]\ntoken = \"bobs\"\n\(allow)\n"
        let users = try scratch.write("users.toml", bothUsers)
        let config = try scratch.write("server.toml", "listen = \"127.0.0.1:\(serverPort)\"\nusers = \"\(users)\"\n")
        let server = try LoggedProcess(["server", "--config", config])
        defer { server.stop() }
        #expect(try await RealProxy.waitForListener(port: serverPort, startedBy: server.process))
        let bob = try LoggedProcess([
            "client", "http://127.0.0.1:\(serverPort)", "--user", "bob", "--token", "bobs", "--transport", "websocket",
            "-L", "127.0.0.1:\(bobsPort):127.0.0.1:\(echo.port)",
        ])
        defer { bob.stop() }
        #expect(try await bob.waitForLog("tunnel established"), "\(bob.log)")
        let aliceArguments = ["client", "http://127.0.0.1:\(serverPort)", "--user", "alice", "--token", "alices", "--transport", "websocket", "-L", "0:127.0.0.1:\(echo.port)"]

        _ = try scratch.write("users.toml", "[users.alice\ntoken = \"alices\"\n")
        kill(server.process.pid, SIGHUP)
        #expect(try await server.waitForLog("SIGHUP: reload refused, the rules in force stay"), "\(server.log)")
        #expect(server.log.contains("users.toml line 1"), "\(server.log)")
        let aliceStill = try LoggedProcess(aliceArguments)
        #expect(try await aliceStill.waitForLog("tunnel established"), "\(aliceStill.log)")
        aliceStill.stop()

        _ = try scratch.write("users.toml", "[users.bob]\ntoken = \"bobs\"\n\(allow)\n")
        kill(server.process.pid, SIGHUP)
        #expect(try await server.waitForLog("SIGHUP: reloaded the access rules (0 --allow entries, 1 user;"), "\(server.log)")
        let aliceRemoved = try self.run(aliceArguments)
        #expect(aliceRemoved.status != 0)
        #expect(aliceRemoved.standardError.contains("unknown user or wrong token"), "\(aliceRemoved.standardError)")
        let transfer = try await TransferClient.echoTransfer(host: "127.0.0.1", port: bobsPort, byteCount: 1 << 20, group: group)
        #expect(transfer.digestsMatch)
        #expect(server.process.isRunning)
        try await echo.close()
    }

    /// SIGHUP puts a new server-wide session limit in force for the next session, and names the changed keys that
    /// only a restart applies.
    @Test func sighupPutsANewSessionLimitInForceAndNamesTheChangesThatWaitForARestart() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let echo = try await EchoServer.start(group: group)
        let serverPort = try await RawConnection.unusedPort(group: group)
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let settings = "listen = \"127.0.0.1:\(serverPort)\"\ntoken = \"t\"\nallow = [\"127.0.0.1:\(echo.port)\"]\n"
        let config = try scratch.write("server.toml", settings + "max-sessions = 1\n")
        let server = try LoggedProcess(["server", "--config", config])
        defer { server.stop() }
        #expect(try await RealProxy.waitForListener(port: serverPort, startedBy: server.process))
        let client = ["client", "http://127.0.0.1:\(serverPort)", "--token", "t", "--transport", "websocket", "-L", "0:127.0.0.1:\(echo.port)"]
        let first = try LoggedProcess(client)
        defer { first.stop() }
        #expect(try await first.waitForLog("tunnel established"), "\(first.log)")
        let refused = try LoggedProcess(client)
        #expect(try await refused.waitForLog("the server has its maximum of 1 sessions"), "\(refused.log)")
        refused.stop()

        _ = try scratch.write("server.toml", settings + "max-sessions = 2\nudp-timeout = 5\n")
        kill(server.process.pid, SIGHUP)
        #expect(try await server.waitForLog("max-sessions 2"), "\(server.log)")
        #expect(server.log.contains("SIGHUP: udp-timeout changed in \(config) and takes effect at the next start"), "\(server.log)")
        let second = try LoggedProcess(client)
        defer { second.stop() }
        #expect(try await second.waitForLog("tunnel established"), "\(second.log)")
        try await echo.close()
    }

    /// A user at its limit of one session whose client was killed (its session waits to be resumed) gets in again
    /// at once with a new client: the waiting session makes room. The new client negotiates its transport, so its
    /// probe sessions must not count against the limit either.
    @Test func aUserAtItsLimitWhoseClientWasKilledGetsInAgainAtOnce() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let serverPort = try await RawConnection.unusedPort(group: group)
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let users = try scratch.write("users.toml", "[users.alice]\ntoken = \"alices\"\nallow = [\"127.0.0.1:1\"]\nmax-sessions = 1\n")
        let server = try LoggedProcess(["server", "--listen", "127.0.0.1:\(serverPort)", "--users", users, "--resume-grace", "300"])
        defer { server.stop() }
        #expect(try await RealProxy.waitForListener(port: serverPort, startedBy: server.process))
        let arguments = ["client", "http://127.0.0.1:\(serverPort)", "--user", "alice", "--token", "alices", "-L", "0:127.0.0.1:1"]
        let first = try LoggedProcess(arguments)
        defer { first.stop() }
        #expect(try await first.waitForLog("transport auto: settled on"), "\(first.log)")
        kill(first.process.pid, SIGKILL)
        _ = first.waitForExit()
        let second = try LoggedProcess(arguments)
        defer { second.stop() }
        #expect(try await second.waitForLog("tunnel established", seconds: 15), "\(second.log)\n\(server.log)")
        #expect(server.log.contains("ending this session, which waits for its client"), "\(server.log)")
    }
}

extension CommandLineTests {
    /// deploy/culvert.service is a unit systemd accepts as it stands (every directive known, the command there), with
    /// culvert's path put in for the built binary.
    @Test func theSystemdUnitInDeployIsOneSystemdAccepts() throws {
        let root = #filePath.components(separatedBy: "/Tests/")[0]
        let unit = try String(contentsOfFile: "\(root)/deploy/culvert.service", encoding: .utf8)
        #expect(unit.contains("DynamicUser=yes") && unit.contains("NoNewPrivileges=yes") && unit.contains("ProtectSystem=strict"))
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let path = try scratch.write("culvert.service", unit.replacingOccurrences(of: "/usr/local/bin/culvert", with: Self.executable.path))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/systemd-analyze")
        process.arguments = ["verify", path]
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = errors
        try process.run()
        let output = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "\(output)")
        #expect(output.isEmpty, "\(output)")
    }
}

extension CommandLineTests {
    /// `--log-format json` writes one JSON object per line with time, level, message and the session's fields
    /// (peer, session, user) as keys; the same event reads the same in text. No token appears in either.
    @Test func jsonLogLinesCarryTheFieldsAsKeysAndTextLinesTheSameEvents() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let users = try scratch.write("users.toml", "[users.alice]\ntoken = \"alices-secret-token\"\nallow = [\"127.0.0.1:1\"]\n")
        for format in ["json", "text"] {
            let serverPort = try await RawConnection.unusedPort(group: group)
            let server = try LoggedProcess(["server", "--listen", "127.0.0.1:\(serverPort)", "--users", users, "--log-format", format, "-v"])
            defer { server.stop() }
            #expect(try await RealProxy.waitForListener(port: serverPort, startedBy: server.process))
            let client = try Self.runStandardIO(
                ["--user", "alice", "--token", "alices-secret-token", "--transport", "websocket", "--stdio", "127.0.0.1:1", "--log-format", format],
                serverPort: serverPort, input: Data()
            )
            #expect(client.status == 1, "\(client.errors)")
            #expect(try await server.waitForLog("stream"), "\(server.log)")
            server.process.stop()
            let log = server.log
            #expect(!log.contains("alices-secret-token"))
            #expect(log.contains("session established over websocket for user alice"), "\(log)")
            if format == "json" {
                let lines = log.split(separator: "\n")
                #expect(!lines.isEmpty)
                var sawUser = false
                for line in lines {
                    let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "not JSON: \(line)")
                    #expect(object["time"] is String && object["level"] is String && object["message"] is String, "\(line)")
                    if object["user"] as? String == "alice" {
                        sawUser = true
                        #expect(object["session"] is String && object["peer"] is String, "\(line)")
                    }
                }
                #expect(sawUser, "\(log)")
                #expect(lines.contains { $0.contains("\"level\":\"debug\"") }, "-v shows debug lines: \(log)")
            } else {
                #expect(log.contains("user=alice"), "\(log)")
                #expect(!log.contains("{\"time\""))
            }
        }
    }
}

extension CommandLineTests {
    /// `--metrics-listen` on server and client: curl reads Prometheus's text format at /metrics, with the session
    /// by transport and user, the stream and its bytes; other paths get 404.
    @Test func metricsListenServesPrometheusTextThatCurlReads() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let echo = try await EchoServer.start(group: group)
        let serverPort = try await RawConnection.unusedPort(group: group)
        let metricsPort = try await RawConnection.unusedPort(group: group)
        let clientMetricsPort = try await RawConnection.unusedPort(group: group)
        let localPort = try await RawConnection.unusedPort(group: group)
        let server = try LoggedProcess([
            "server", "--listen", "127.0.0.1:\(serverPort)", "--token", "t", "--allow", "127.0.0.1:\(echo.port)",
            "--metrics-listen", "127.0.0.1:\(metricsPort)",
        ])
        defer { server.stop() }
        #expect(try await RealProxy.waitForListener(port: serverPort, startedBy: server.process))
        let client = try LoggedProcess([
            "client", "http://127.0.0.1:\(serverPort)", "--token", "t", "--transport", "websocket",
            "-L", "127.0.0.1:\(localPort):127.0.0.1:\(echo.port)", "--metrics-listen", "127.0.0.1:\(clientMetricsPort)",
        ])
        defer { client.stop() }
        #expect(try await client.waitForLog("tunnel established"), "\(client.log)")
        let transfer = try await TransferClient.echoTransfer(host: "127.0.0.1", port: localPort, byteCount: 50_000, group: group)
        #expect(transfer.digestsMatch)
        let serverText = ChildProcess.run("/usr/bin/curl", ["-sS", "--max-time", "10", "http://127.0.0.1:\(metricsPort)/metrics"]) ?? ""
        #expect(serverText.contains("culvert_sessions_open{transport=\"websocket\",user=\"\"} 1"), "\(serverText)")
        #expect(serverText.contains("culvert_streams_opened_total{outcome=\"ok\"} 1"), "\(serverText)")
        #expect(serverText.contains("culvert_stream_bytes_total{transport=\"websocket\",direction=\"in\"} 50000"), "\(serverText)")
        #expect(serverText.contains("# TYPE culvert_sessions_open gauge"), "\(serverText)")
        let clientText = ChildProcess.run("/usr/bin/curl", ["-sS", "--max-time", "10", "http://127.0.0.1:\(clientMetricsPort)/metrics"]) ?? ""
        #expect(clientText.contains("culvert_stream_bytes_total{transport=\"websocket\",direction=\"out\"} 50000"), "\(clientText)")
        let notFound = ChildProcess.run("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(metricsPort)/"]) ?? ""
        #expect(notFound == "404")
        try await echo.close()
    }
}
