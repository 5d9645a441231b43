import Foundation
import Testing

/// Runs the built `culvert` executable (which `swift test` builds beside the test bundle) and checks exit codes
/// and the one-line messages users see.
@Suite(.serialized, .timeLimit(.minutes(2))) struct CommandLineTests {
    struct Outcome {
        var status: Int32
        var standardError: String
    }

    static let cacheDirectory = FileManager.default.temporaryDirectory
        .appendingPathComponent("culvert-cli-cache-\(UUID().uuidString)").path

    static var executable: URL {
        let testBundle = URL(fileURLWithPath: CommandLine.arguments[0])
        return testBundle.deletingLastPathComponent().appendingPathComponent("culvert")
    }

    func launch(_ arguments: [String], environment: [String: String] = [:]) throws -> (Process, Pipe) {
        let process = Process()
        process.executableURL = Self.executable
        process.arguments = arguments
        var inherited = ProcessInfo.processInfo.environment
        for name in ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"] {
            inherited.removeValue(forKey: name)
        }
        // A cache directory of the test's own: `auto` remembers its winner there, not in the user's cache.
        inherited["XDG_CACHE_HOME"] = Self.cacheDirectory
        process.environment = inherited.merging(environment) { $1 }
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        return (process, errors)
    }

    func run(_ arguments: [String], environment: [String: String] = [:]) throws -> Outcome {
        let (process, errors) = try self.launch(arguments, environment: environment)
        let data = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Outcome(status: process.terminationStatus, standardError: String(decoding: data, as: UTF8.self))
    }

    /// Runs culvert with `arguments` to its end and parses its standard output as one JSON object.
    func runJSON(_ arguments: [String]) throws -> (status: Int32, object: [String: Any]) {
        let (status, output) = try self.runForOutput(arguments)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any])
        return (status, object)
    }

    /// Runs culvert with `arguments` to its end and returns its exit status and standard output.
    func runForOutput(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = Self.executable
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, text)
    }

    /// A port for a `culvert` process the test starts (see ``ReservedPort``).
    func freePort() throws -> Int {
        try ReservedPort.take()
    }

    /// Starts a server and waits until its port accepts connections.
    func startServer(port: Int, token: String, extraArguments: [String] = []) throws -> Process {
        try self.startServerWithLog(port: port, token: token, extraArguments: extraArguments).0
    }

    /// Starts a server and waits until its port accepts connections; its standard error is the pipe.
    func startServerWithLog(port: Int, token: String, extraArguments: [String] = []) throws -> (Process, Pipe) {
        let (server, errors) = try self.launch(
            ["server", "--listen", "127.0.0.1:\(port)", "--token", token, "--allow", "127.0.0.1:1"] + extraArguments
        )
        for _ in 0..<200 {
            let socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = UInt16(port).bigEndian
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            close(socket)
            if connected == 0 { return (server, errors) }
            usleep(50_000)
        }
        server.terminate()
        throw CommandLineTestError.serverDidNotStart
    }

    enum CommandLineTestError: Error { case serverDidNotStart }

    /// A wrong token makes the client exit non-zero with one line naming the cause.
    @Test func wrongTokenExitsNonZeroWithTheMessage() throws {
        let port = try self.freePort()
        let server = try self.startServer(port: port, token: "right")
        defer { server.terminate(); server.waitUntilExit() }
        let outcome = try self.run(["client", "http://127.0.0.1:\(port)", "--token", "wrong", "-L", "0:127.0.0.1:1"])
        #expect(outcome.status == 1)
        #expect(outcome.standardError.contains("culvert: error:") && outcome.standardError.contains("wrong token"))
    }

    /// SIGTERM shuts the server down cleanly with exit status 0.
    @Test func serverExitsCleanlyOnSigterm() throws {
        let port = try self.freePort()
        let server = try self.startServer(port: port, token: "t")
        server.terminate()
        server.waitUntilExit()
        #expect(server.terminationReason == .exit && server.terminationStatus == 0)
    }

    /// A malformed -L names the part that is wrong and exits non-zero.
    @Test func badForwardSyntaxNamesThePart() throws {
        let outcome = try self.run(["client", "http://127.0.0.1:1", "-L", "9000:db:notaport"])
        #expect(outcome.status != 0)
        #expect(outcome.standardError.contains("HOSTPORT 'notaport'"))
    }

    /// An unknown transport name is refused with the list of valid ones, not silently replaced.
    @Test func unknownTransportNameListsTheChoices() throws {
        let outcome = try self.run(["client", "http://127.0.0.1:1", "--transport", "carrier-pigeon", "-L", "0:h:1"])
        #expect(outcome.status != 0)
        #expect(outcome.standardError.contains("'auto', 'websocket', 'connect', 'chunked' or 'polling'"))
    }

    /// A proxy that is down: one line naming the proxy and what to check, exit 1.
    @Test func unreachableProxyExitsWithOneLine() throws {
        let port = try self.freePort()
        let outcome = try self.run([
            "client", "http://127.0.0.1:1", "--token", "t", "--transport", "polling", "--max-retry-time", "0",
            "--proxy", "http://127.0.0.1:\(port)", "-L", "0:h:1",
        ])
        #expect(outcome.status == 1)
        #expect(outcome.standardError.contains("cannot connect to the proxy http://127.0.0.1:\(port)"))
        #expect(outcome.standardError.split(separator: "\n").filter { $0.contains("error") }.count == 1)
    }

    /// `http_proxy` from the environment is used (and said so), NO_PROXY exempts the server, and --no-proxy
    /// ignores the variables.
    @Test func proxyEnvironmentIsHonouredAndCanBeIgnored() throws {
        let proxyPort = try self.freePort()
        let serverPort = try self.freePort()
        let arguments = ["client", "http://127.0.0.1:\(serverPort)", "--token", "t", "--transport", "chunked", "--max-retry-time", "0", "-L", "0:h:1"]
        let environment = ["http_proxy": "http://127.0.0.1:\(proxyPort)"]
        let viaProxy = try self.run(arguments, environment: environment)
        #expect(viaProxy.status == 1)
        #expect(viaProxy.standardError.contains("from the environment"))
        #expect(viaProxy.standardError.contains("cannot connect to the proxy http://127.0.0.1:\(proxyPort)"))
        let exempted = try self.run(arguments, environment: environment.merging(["NO_PROXY": "127.0.0.1"]) { $1 })
        #expect(exempted.standardError.contains("cannot connect to 127.0.0.1:\(serverPort)"))
        let ignored = try self.run(arguments + ["--no-proxy"], environment: environment)
        #expect(ignored.status == 1)
        #expect(ignored.standardError.contains("cannot connect to 127.0.0.1:\(serverPort)"))
    }

    /// `probe --json` prints one object with the choice and every transport's name, works, failure and rtt_ms;
    /// exit 0 when one works, 1 when none does, 2 for a bad URL.
    @Test func probeReportsAsJSONWithExitCodes() throws {
        let port = try self.freePort()
        let server = try self.startServer(port: port, token: "t")
        defer {
            server.terminate()
            server.waitUntilExit()
        }
        let (status, report) = try self.runJSON(["probe", "http://127.0.0.1:\(port)", "--token", "t", "--json"])
        #expect(status == 0)
        #expect(report["choice"] as? String == "websocket")
        let transports = try #require(report["transports"] as? [[String: Any]])
        #expect(transports.map { $0["name"] as? String } == ["websocket", "connect", "chunked", "polling"])
        #expect(transports.allSatisfy { $0["works"] as? Bool == true && $0.keys.contains("failure") && $0["rtt_ms"] is Double })

        let down = try self.run(["probe", "http://127.0.0.1:\(try self.freePort())", "--json"])
        #expect(down.status == 1)
        let bad = try self.run(["probe", "ftp://nowhere"])
        #expect(bad.status == 2)
    }

    /// `--transport auto` settles on the best transport that works, remembers it for the (server, proxy), and the
    /// next start uses the remembered one first.
    @Test func autoSettlesRemembersAndReusesTheWinner() async throws {
        let port = try self.freePort()
        let server = try self.startServer(port: port, token: "t")
        defer {
            server.terminate()
            server.waitUntilExit()
        }
        let cacheDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("culvert-auto-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: cacheDirectory) }
        func runClientUntil(_ text: String) async throws -> String {
            let log = cacheDirectory + "-\(UUID().uuidString).log"
            _ = FileManager.default.createFile(atPath: log, contents: nil)
            let process = Process()
            process.executableURL = Self.executable
            process.arguments = ["client", "http://127.0.0.1:\(port)", "--token", "t", "-L", "0:127.0.0.1:1"]
            process.environment = ProcessInfo.processInfo.environment.merging(["XDG_CACHE_HOME": cacheDirectory]) { $1 }
            process.standardError = FileHandle(forWritingAtPath: log)
            try process.run()
            defer {
                process.terminate()
                process.waitUntilExit()
                try? FileManager.default.removeItem(atPath: log)
            }
            for _ in 0..<200 {
                let contents = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
                if contents.contains(text) { return contents }
                try await Task.sleep(for: .milliseconds(50))
            }
            return (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        }
        let first = try await runClientUntil("settled on")
        #expect(first.contains("transport auto: settled on websocket"))
        // Moving the session to a cheaper transport is planned, not a lost connection.
        #expect(!first.contains("tunnel connection lost"), "\(first)")
        let cache = try String(contentsOfFile: cacheDirectory + "/culvert/transports.json", encoding: .utf8)
        #expect(cache.contains("\"websocket\""))
        let second = try await runClientUntil("settled on")
        #expect(second.contains("using websocket, which won last time"))
    }

    /// `demo --through-faulty-proxy` shows the negotiator at work: WebSocket and CONNECT fail at the proxy, the
    /// demo runs over chunked, and every byte comes back.
    @Test func demoThroughAFaultyProxyNegotiatesChunked() throws {
        let (status, text) = try self.runForOutput(["demo", "--mib", "1", "--streams", "2", "--through-faulty-proxy"])
        #expect(status == 0)
        #expect(text.contains("websocket  fails: Upgrade stripped on the way"))
        #expect(text.contains("connect    fails: CONNECT refused"))
        #expect(text.contains("over chunked"))
        #expect(text.contains("checksum OK"))
    }

    /// A proxy URL with a scheme culvert cannot speak is refused before anything is dialled.
    /// `server --tls-self-signed` prints the pin of the key it created; a client with that pin gets through on every
    /// transport, one without it or with another pin gets a one-line refusal; a second start keeps the key.
    @Test func selfSignedServerPrintsAPinThatClientsTrust() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("culvert-cli-tls-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        func startAndReadPin() throws -> (Process, String, Int) {
            let port = try self.freePort()
            let (server, errors) = try self.startServerWithLog(port: port, token: "t", extraArguments: ["--tls-self-signed", "--tls-dir", directory, "--log-format", "text"])
            var text = ""
            while !text.contains("--tls-pin sha256:") || !text.contains("\n") {
                let data = errors.fileHandleForReading.availableData
                if data.isEmpty { break }
                text += String(decoding: data, as: UTF8.self)
            }
            let pin = text.components(separatedBy: "--tls-pin ").dropFirst().first?.prefix { !$0.isWhitespace }
            return (server, String(pin ?? ""), port)
        }
        let (server, pin, port) = try startAndReadPin()
        #expect(pin.hasPrefix("sha256:") && pin.count == 51)
        let (status, report) = try self.runJSON(["probe", "https://127.0.0.1:\(port)", "--token", "t", "--tls-pin", pin, "--json"])
        #expect(status == 0)
        let transports = try #require(report["transports"] as? [[String: Any]])
        #expect(transports.allSatisfy { $0["works"] as? Bool == true })

        let untrusted = try self.run(["client", "https://127.0.0.1:\(port)", "--token", "t", "--transport", "websocket", "-L", "0:127.0.0.1:1"])
        #expect(untrusted.status == 1)
        #expect(untrusted.standardError.contains("not trusted") && untrusted.standardError.contains("--tls-pin"))
        let otherPin = "sha256:" + Data(repeating: 1, count: 32).base64EncodedString()
        let wrongPin = try self.run(["client", "https://127.0.0.1:\(port)", "--token", "t", "--transport", "chunked",
                                     "--tls-pin", otherPin, "-L", "0:127.0.0.1:1"])
        #expect(wrongPin.status == 1)
        #expect(wrongPin.standardError.contains("TLS"))
        let badPin = try self.run(["client", "https://127.0.0.1:\(port)", "--tls-pin", "md5:abc", "-L", "0:127.0.0.1:1"])
        #expect(badPin.status == 2)
        server.terminate()
        server.waitUntilExit()

        let (again, samePin, _) = try startAndReadPin()
        #expect(samePin == pin)
        again.terminate()
        again.waitUntilExit()
    }

    @Test func unsupportedProxySchemeIsRefused() throws {
        let outcome = try self.run(["client", "http://127.0.0.1:1", "--proxy", "socks5://127.0.0.1:1080", "-L", "0:h:1"])
        #expect(outcome.status != 0)
        #expect(outcome.standardError.contains("scheme 'socks5' is not supported"))
    }

    /// A server without a token refuses to start unless --no-auth is given.
    @Test func serverWithoutTokenRefusesToStart() throws {
        let process = Process()
        process.executableURL = Self.executable
        process.arguments = ["server", "--listen", "127.0.0.1:0"]
        var environment = ProcessInfo.processInfo.environment
        environment.removeValue(forKey: "CULVERT_TOKEN")
        process.environment = environment
        let errors = Pipe()
        process.standardError = errors
        try process.run()
        let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 2)
        #expect(message.contains("needs a token"))
    }

    /// A server that is down, with `--max-retry-time 0`: one line saying so, the cause said once for all four
    /// transports, exit 1.
    @Test func unreachableServerExitsWithOneLineNamingTheCauseOnce() throws {
        let port = try self.freePort()
        let outcome = try self.run(["client", "http://127.0.0.1:\(port)", "--token", "t", "--max-retry-time", "0", "-L", "0:h:1"])
        #expect(outcome.status == 1)
        #expect(outcome.standardError.contains("connection refused"))
        #expect(outcome.standardError.contains("(all 4 transports)"))
        #expect(outcome.standardError.components(separatedBy: "connection refused").count == 2, "\(outcome.standardError)")
        #expect(outcome.standardError.split(separator: "\n").filter { $0.contains("error") }.count == 1)
    }
}
