import CulvertTools
import Foundation
import NIOCore
import NIOPosix
import Testing

/// What a new user meets in the first hour: `--version`, a client started before its server, Ctrl-C twice, and the
/// messages for the usual mistakes. Each test runs the built `culvert` and checks the words that matter.
extension CommandLineTests {
    /// A child `culvert` whose standard output and error go to a log file that the test reads while it runs.
    struct LoggedProcess {
        let process: ChildProcess
        let logPath: String

        /// With `onTerminal`, culvert runs under util-linux's `script`, so that its standard error is a pseudo-terminal
        /// (what `script` writes to the log is what a user's terminal would get).
        init(_ arguments: [String], onTerminal: Bool = false, environment extra: [String: String] = [:]) throws {
            self.logPath = FileManager.default.temporaryDirectory.appendingPathComponent("culvert-cli-\(UUID().uuidString).log").path
            let environment = ["XDG_CACHE_HOME": CommandLineTests.cacheDirectory].merging(extra) { $1 }
            if onTerminal {
                let command = ([CommandLineTests.executable.path] + arguments).map { "'" + $0 + "'" }.joined(separator: " ")
                self.process = try ChildProcess.spawn(
                    "/usr/bin/script", ["-qfec", "exec " + command, "/dev/null"], outputPath: self.logPath, environment: environment
                )
            } else {
                self.process = try ChildProcess.spawn(CommandLineTests.executable.path, arguments, outputPath: self.logPath, environment: environment)
            }
        }

        var log: String { (try? String(contentsOfFile: self.logPath, encoding: .utf8)) ?? "" }

        /// Waits until the log contains `text` (true) or `seconds` pass (false).
        func waitForLog(_ text: String, seconds: Double = 20) async throws -> Bool {
            try await self.waitForLog(seconds: seconds) { $0.contains(text) }
        }

        /// Waits until `condition` holds for the log (true) or `seconds` pass (false).
        func waitForLog(seconds: Double = 20, until condition: (String) -> Bool) async throws -> Bool {
            let deadline = NIODeadline.now() + .milliseconds(Int64(seconds * 1000))
            while NIODeadline.now() < deadline {
                if condition(self.log) { return true }
                try await Task.sleep(for: .milliseconds(50))
            }
            return condition(self.log)
        }

        /// Waits for the process to exit and returns its status (nil if it was killed by a signal).
        func waitForExit() -> Int32? {
            var status: Int32 = 0
            waitpid(self.process.pid, &status, 0)
            return (status & 0x7f) == 0 ? (status >> 8) & 0xff : nil
        }

        func stop() {
            self.process.stop()
            try? FileManager.default.removeItem(atPath: self.logPath)
        }
    }

    /// `--version` names the release, the git commit the binary was built from and the wire protocol version.
    @Test func versionNamesTheReleaseTheCommitAndTheWireProtocol() throws {
        let (status, output) = try self.runForOutput(["--version"])
        #expect(status == 0)
        #expect(output.hasPrefix("culvert 0."))
        #expect(output.contains("wire protocol 2"))
        let head = ChildProcess.run("/usr/bin/git", ["-C", #filePath.components(separatedBy: "/Tests/")[0], "rev-parse", "--short=12", "HEAD"])?
            .trimmingCharacters(in: .whitespacesAndNewlines)
        if let head, !head.isEmpty {
            #expect(output.contains("commit \(head)"), "\(output) does not name HEAD \(head)")
        } else {
            #expect(output.contains("commit "))
        }
    }

    /// SIGTERM or Ctrl-C while the server is still down, with a local connection waiting for the tunnel, stops the
    /// client at once with status 0 and closes the waiting connection (the client once ignored signals until its
    /// first session came, which it never did).
    @Test(arguments: [SIGTERM, SIGINT])
    func aSignalStopsAClientWhoseServerIsNotUpYet(signal: Int32) async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let serverPort = try await RawConnection.unusedPort(group: group)
        let localPort = try await RawConnection.unusedPort(group: group)
        let client = try LoggedProcess([
            "client", "http://127.0.0.1:\(serverPort)", "--token", "t", "--transport", "websocket",
            "-L", "127.0.0.1:\(localPort):127.0.0.1:1",
        ])
        defer { client.stop() }
        #expect(try await RealProxy.waitForListener(port: localPort, startedBy: client.process))
        let waiting = try await RawConnection.connectWithoutReading(port: localPort, group: group)
        #expect(try await client.waitForLog("waits for the tunnel"), "\(client.log)")
        kill(client.process.pid, signal)
        // A client that ignores the signal is killed after 10 s, so that this test fails instead of hanging.
        let pid = client.process.pid
        let deadline = group.any().scheduleTask(in: .seconds(10)) { kill(pid, SIGKILL) }
        try await waiting.closeFuture.get()
        #expect(client.waitForExit() == 0, "\(client.log)")
        deadline.cancel()
        #expect(client.log.contains("stopping before the tunnel to the server was up"), "\(client.log)")
    }

    /// A client started while its server is down keeps its listener open and says when it retries; a connection
    /// made to the listener meanwhile waits, and goes through once the server appears (within one backoff step).
    @Test func aClientStartedBeforeItsServerConnectsWhenTheServerAppears() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let echo = try await EchoServer.start(group: group)
        let serverPort = try await RawConnection.unusedPort(group: group)
        let localPort = try await RawConnection.unusedPort(group: group)
        let client = try LoggedProcess([
            "client", "http://127.0.0.1:\(serverPort)", "--token", "t", "--transport", "websocket",
            "-L", "127.0.0.1:\(localPort):127.0.0.1:\(echo.port)",
        ])
        defer { client.stop() }
        #expect(try await client.waitForLog("retrying in"), "\(client.log)")
        #expect(try await RealProxy.waitForListener(port: localPort, startedBy: client.process))
        let early = Task { try await TransferClient.echoTransfer(host: "127.0.0.1", port: localPort, byteCount: 64 * 1024, group: group) }
        #expect(try await client.waitForLog("waits for the tunnel"), "\(client.log)")
        let server = try LoggedProcess(["server", "--listen", "127.0.0.1:\(serverPort)", "--token", "t", "--allow", "127.0.0.1:\(echo.port)"])
        defer { server.stop() }
        #expect(try await client.waitForLog("tunnel established"), "\(client.log)")
        let transfer = try await early.value
        #expect(transfer.digestsMatch)
        // The transfer's connection, and the one that checked the listener was open.
        #expect(client.log.contains("local connections that waited for the tunnel"))
        try await echo.close()
    }

    /// Trying again cannot fix a wrong token: the client exits at once with the reason, although it would wait for
    /// a server that is down.
    @Test func aClientThatWouldWaitExitsAtOnceOnAWrongToken() async throws {
        let port = try self.freePort()
        let server = try self.startServer(port: port, token: "right")
        defer { server.terminate(); server.waitUntilExit() }
        let started = NIODeadline.now()
        let outcome = try self.run(["client", "http://127.0.0.1:\(port)", "--token", "wrong", "-L", "0:127.0.0.1:1"])
        #expect(outcome.status == 1)
        #expect(outcome.standardError.contains("wrong token") && outcome.standardError.contains("check --token"))
        #expect(!outcome.standardError.contains("retrying"))
        #expect(NIODeadline.now() - started < .seconds(20))
    }

    /// `--max-retry-time` bounds the waiting: past it the client says it gives up, and exits non-zero.
    @Test func maxRetryTimeBoundsTheWaitingForAServerThatIsDown() throws {
        let port = try self.freePort()
        let started = NIODeadline.now()
        let outcome = try self.run(["client", "http://127.0.0.1:\(port)", "--token", "t", "--transport", "connect",
                                    "--max-retry-time", "1", "-L", "0:h:1"])
        #expect(outcome.status == 1)
        #expect(outcome.standardError.contains("retrying in"))
        #expect(outcome.standardError.contains("connection refused"))
        #expect(NIODeadline.now() - started >= .seconds(1))
        #expect(NIODeadline.now() - started < .seconds(20))
    }

    /// No token against a server that needs one says so, for the client and for every row of the probe.
    @Test func noTokenGivenIsNotCalledAWrongToken() throws {
        let port = try self.freePort()
        let server = try self.startServer(port: port, token: "right")
        defer { server.terminate(); server.waitUntilExit() }
        let noTokenEnvironment = ["CULVERT_TOKEN": ""]
        let client = try self.run(["client", "http://127.0.0.1:\(port)", "-L", "0:127.0.0.1:1"], environment: noTokenEnvironment)
        #expect(client.status == 1)
        #expect(client.standardError.contains("no token given"))
        #expect(!client.standardError.contains("wrong token"))
        #expect(!client.standardError.contains("check --token"))
        let (status, report) = try self.runJSON(["probe", "http://127.0.0.1:\(port)", "--json"])
        #expect(status == 1)
        let transports = try #require(report["transports"] as? [[String: Any]])
        #expect(transports.count == 4)
        for transport in transports {
            #expect(transport["failure"] as? String == "auth_failed")
            #expect((transport["detail"] as? String)?.contains("no token given") == true, "\(transport)")
        }
    }

    /// A run of `culvert probe` with a wrong token costs the server's throttle one failure, not one per transport:
    /// with a limit of 3 a minute, three runs each see `auth_failed` on every row (polling too), and only the fourth
    /// is turned away (`throttled`), saying that earlier attempts from the address failed (not "check --token").
    @Test func aProbeRunWithAWrongTokenCountsAsOneAttempt() throws {
        let port = try self.freePort()
        let server = try self.startServer(port: port, token: "right", extraArguments: ["--auth-failures-per-minute", "3"])
        defer { server.terminate(); server.waitUntilExit() }
        for run in 1...3 {
            let (status, report) = try self.runJSON(["probe", "http://127.0.0.1:\(port)", "--token", "wrong", "--json"])
            #expect(status == 1)
            let transports = try #require(report["transports"] as? [[String: Any]])
            #expect(transports.map { $0["failure"] as? String } == Array(repeating: "auth_failed", count: 4), "run \(run): \(transports)")
        }
        let (status, report) = try self.runJSON(["probe", "http://127.0.0.1:\(port)", "--token", "wrong", "--json"])
        #expect(status == 1)
        let transports = try #require(report["transports"] as? [[String: Any]])
        for transport in transports {
            #expect(transport["failure"] as? String == "throttled", "\(transport)")
            let detail = transport["detail"] as? String ?? ""
            #expect(detail.contains("earlier attempts from 127.0.0.1 failed"), "\(detail)")
            #expect(!detail.contains("check --token"))
        }
    }

    /// The first Ctrl-C lets open streams finish (up to the shutdown grace) and says a second one exits at once; the
    /// second ends the process at once, with the signal's name in the log.
    @Test func aSecondCtrlCEndsTheProcessAtOnce() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let echo = try await EchoServer.start(group: group)
        let serverPort = try await RawConnection.unusedPort(group: group)
        let localPort = try await RawConnection.unusedPort(group: group)
        let server = try LoggedProcess(["server", "--listen", "127.0.0.1:\(serverPort)", "--token", "t", "--allow", "127.0.0.1:\(echo.port)"])
        defer { server.stop() }
        #expect(try await RealProxy.waitForListener(port: serverPort, startedBy: server.process))
        let client = try LoggedProcess([
            "client", "http://127.0.0.1:\(serverPort)", "--token", "t", "--transport", "websocket", "--shutdown-grace", "120",
            "-L", "127.0.0.1:\(localPort):127.0.0.1:\(echo.port)",
        ])
        defer { client.stop() }
        #expect(try await RealProxy.waitForListener(port: localPort, startedBy: client.process))
        // An open stream keeps the first Ctrl-C waiting for the grace period.
        let open = try await ClientBootstrap(group: group).connect(host: "127.0.0.1", port: localPort).get()
        defer { open.close(promise: nil) }
        #expect(try await client.waitForLog("tunnel established"))
        try await open.writeAndFlush(ByteBuffer(string: "held open")).get()
        kill(client.process.pid, SIGINT)
        #expect(try await client.waitForLog("SIGINT (Ctrl-C): shutting down"), "\(client.log)")
        #expect(client.log.contains("again to exit at once"))
        #expect(client.process.isRunning)
        let secondAt = NIODeadline.now()
        kill(client.process.pid, SIGINT)
        let status = client.waitForExit()
        #expect(status == 128 + SIGINT)
        #expect(NIODeadline.now() - secondAt < .seconds(10))
        #expect(client.log.contains("second SIGINT (Ctrl-C): exiting now"))
        try await echo.close()
    }

    /// -L mistakes are caught while parsing, each with what to do and the client's own usage: a BIND that is not an
    /// address of this machine, one local port twice, IPv6 without brackets, and one field.
    @Test func forwardMistakesAreCaughtWhileParsing() throws {
        let cases: [([String], String)] = [
            (["-L", "192.0.2.77:9000:db:5432"], "is not an address of this machine"),
            (["-L", "no-such-host.invalid:9000:db:5432"], "not an IP address or a host name"),
            (["-L", "9000:db:5432", "-L", "9000:db:5433"], "local port 9000 is already taken by -L"),
            (["-L", "::1:9000:db:5432"], "IPv6 addresses go in brackets"),
            (["-L", "9000"], "got 1 field"),
        ]
        for (arguments, words) in cases {
            let outcome = try self.run(["client", "http://127.0.0.1:1", "--token", "t"] + arguments)
            #expect(outcome.status == 2, "\(arguments)")
            #expect(outcome.standardError.contains(words), "\(arguments): \(outcome.standardError)")
            #expect(outcome.standardError.contains("Usage: culvert client"), "\(arguments): \(outcome.standardError)")
            #expect(!outcome.standardError.contains("fields") || !words.contains("1 field"))
            #expect(!outcome.standardError.contains("SocketAddressError"))
        }
    }

    /// An error found after parsing shows the subcommand's usage, not the top-level one.
    @Test func anErrorAfterParsingShowsTheSubcommandsUsage() throws {
        let outcome = try self.run(["server", "--listen", "nonsense", "--token", "t"])
        #expect(outcome.status == 2)
        #expect(outcome.standardError.contains("--listen 'nonsense' must be HOST:PORT"))
        #expect(outcome.standardError.contains("Usage: culvert server"))
        #expect(outcome.standardError.contains("See 'culvert server --help'"))
    }

    /// `--token-file` that cannot be read says why: no such file, or a directory.
    @Test func anUnreadableTokenFileSaysWhy() throws {
        let missing = try self.run(["client", "http://127.0.0.1:1", "--token-file", "/nonexistent/culvert-token", "-L", "0:h:1"])
        #expect(missing.status != 0)
        #expect(missing.standardError.contains("cannot read --token-file /nonexistent/culvert-token: no such file"))
        let directory = try self.run(["client", "http://127.0.0.1:1", "--token-file", FileManager.default.temporaryDirectory.path, "-L", "0:h:1"])
        #expect(directory.status != 0)
        #expect(directory.standardError.contains("it is a directory"))
    }

    /// `curl` at the server's path prefix gets a short page naming culvert and its version (not 404); HEAD gets the
    /// headers only. The server's log shows addresses as people write them.
    @Test func theServersPathAnswersCurlWithAPageSayingWhatItIs() throws {
        let port = try self.freePort()
        let (server, errors) = try self.startServerWithLog(port: port, token: "t")
        let page = ChildProcess.run("/usr/bin/curl", ["-sS", "-w", "\n%{http_code}", "http://127.0.0.1:\(port)/culvert"]) ?? ""
        #expect(page.contains("culvert 0."))
        #expect(page.contains("This is a culvert tunnel endpoint"))
        #expect(page.hasSuffix("200"))
        let head = ChildProcess.run("/usr/bin/curl", ["-sS", "-I", "http://127.0.0.1:\(port)/culvert/"]) ?? ""
        #expect(head.hasPrefix("HTTP/1.1 200"))
        #expect(!head.contains("tunnel endpoint"))
        let elsewhere = ChildProcess.run("/usr/bin/curl", ["-sS", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(port)/other"]) ?? ""
        #expect(elsewhere == "404")
        server.terminate()
        server.waitUntilExit()
        let log = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(log.contains("listening on 127.0.0.1:\(port)"), "\(log)")
        #expect(!log.contains("[IPv4]"))
        #expect(log.contains("SIGTERM: shutting down"))
    }

    /// A wrong token is a warning in the server's log, naming the address; a probe's connections that never sent a
    /// proof are not logged at info.
    @Test func theServerWarnsOfAWrongTokenAndKeepsProbesQuiet() throws {
        let port = try self.freePort()
        let (server, errors) = try self.startServerWithLog(port: port, token: "right")
        _ = try self.run(["probe", "http://127.0.0.1:\(port)", "--token", "wrong"])
        server.terminate()
        server.waitUntilExit()
        let log = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let refusals = log.split(separator: "\n").filter { $0.contains("wrong token") }
        #expect(refusals.count == 1, "\(log)")
        #expect(refusals.allSatisfy { $0.contains("warning") && $0.contains("refused 127.0.0.1") })
        #expect(!log.contains("session ended"), "\(log)")
    }
}
