import Crypto
import CulvertTools
import Foundation
import NIOCore
import NIOPosix
import Testing

/// What users forward besides `-L`, through the built `culvert`: ssh with `--stdio` as its ProxyCommand (OpenSSH's
/// client and a throwaway sshd, both from Debian) and curl through `-D`.
extension CommandLineTests {
    /// A file of `byteCount` random bytes in the temporary directory, and its sha256 as sha256sum prints it.
    static func randomFile(byteCount: Int) throws -> (path: String, sha256: String) {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("culvert-stdio-\(UUID().uuidString)").path
        let digest = ChildProcess.run("/bin/sh", ["-c", "head -c \(byteCount) /dev/urandom > \(path) && sha256sum < \(path)"]) ?? ""
        return (path, String(digest.prefix(64)))
    }

    /// Runs `culvert client http://127.0.0.1:serverPort` with `arguments`, its standard input a pipe that holds
    /// `input` and is closed before it starts; returns its exit status, standard output and standard error.
    static func runStandardIO(_ arguments: [String], serverPort: Int, input: Data) throws -> (status: Int32, output: Data, errors: String) {
        let process = Process()
        process.executableURL = Self.executable
        process.arguments = ["client", "http://127.0.0.1:\(serverPort)"] + arguments
        let inputPipe = Pipe()
        let outputPipe = Pipe()
        let errorPipe = Pipe()
        process.standardInput = inputPipe
        process.standardOutput = outputPipe
        process.standardError = errorPipe
        try inputPipe.fileHandleForWriting.write(contentsOf: input)
        try inputPipe.fileHandleForWriting.close()
        try process.run()
        // Standard error is small; standard output is read to its end first, so that a full pipe cannot stall it.
        let output = outputPipe.fileHandleForReading.readDataToEndOfFile()
        let errors = String(decoding: errorPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, output, errors)
    }

    /// ssh with `ProxyCommand='culvert client URL --stdio %h:%p'` logs in to a real sshd through the tunnel: a
    /// command's output comes back, and 16 MiB goes each way intact (up into the remote sha256sum, whose end needs
    /// the half-close of ssh's input to cross the tunnel; down from a remote cat).
    @Test func sshUsesStdioAsItsProxyCommandAndMovesBytesBothWays() async throws {
        let sshd = try await ThrowawaySSHServer.start(port: try self.freePort())
        defer { sshd.stop() }
        let port = try self.freePort()
        let server = try self.startServer(port: port, token: "stdio-token", extraArguments: ["--allow", "127.0.0.1:\(sshd.port)"])
        defer { server.terminate(); server.waitUntilExit() }
        let file = try Self.randomFile(byteCount: 16 << 20)
        defer { try? FileManager.default.removeItem(atPath: file.path) }

        let proxyCommand = "\(Self.executable.path) client http://127.0.0.1:\(port) --token stdio-token --max-retry-time 0 --stdio %h:%p"
        let ssh = ([ThrowawaySSHServer.sshPath ?? "ssh"] + sshd.clientArguments()).joined(separator: " ")
            + " -o 'ProxyCommand=\(proxyCommand)' \(NSUserName())@127.0.0.1"
        let greeting = ChildProcess.run("/bin/sh", ["-c", "\(ssh) 'echo through culvert: $((6 * 7))' 2>&1"]) ?? ""
        let up = ChildProcess.run("/bin/sh", ["-c", "\(ssh) sha256sum < \(file.path) 2>&1"]) ?? ""
        let down = ChildProcess.run("/bin/sh", ["-c", "\(ssh) cat \(file.path) 2>&1 | sha256sum"]) ?? ""
        #expect(greeting == "through culvert: 42\n")
        #expect(up == "\(file.sha256)  -\n")
        #expect(down == "\(file.sha256)  -\n")
    }

    /// Input that is all there when culvert starts (`printf … | culvert … --stdio`) goes through, and its end with
    /// it: the echo comes back whole and culvert exits 0 once the target closed too.
    @Test func stdioCarriesInputThatIsAllThereAtTheStartAndItsEnd() async throws {
        let echo = try await EchoServer.start(group: MultiThreadedEventLoopGroup.singleton)
        let port = try self.freePort()
        let server = try self.startServer(port: port, token: "t", extraArguments: ["--allow", "127.0.0.1:\(echo.port)"])
        defer { server.terminate(); server.waitUntilExit() }
        let text = Data((0..<2000).map { "line \($0)\n" }.joined().utf8)
        let run = try Self.runStandardIO(["--token", "t", "--transport", "websocket", "--stdio", "127.0.0.1:\(echo.port)"], serverPort: port, input: text)
        try await echo.close()
        #expect(run.status == 0)
        #expect(run.output == text)
    }

    /// `--stdio` to a target the server does not allow exits non-zero with the server's reason, without waiting
    /// for its input to end.
    @Test func stdioToATargetTheServerRefusesExitsWithTheReason() throws {
        let port = try self.freePort()
        let server = try self.startServer(port: port, token: "t")
        defer { server.terminate(); server.waitUntilExit() }
        let run = try Self.runStandardIO(["--token", "t", "--transport", "websocket", "--stdio", "127.0.0.1:9"], serverPort: port, input: Data())
        let message = run.errors
        #expect(run.status == 1)
        #expect(message.contains("culvert: error: the server could not open 127.0.0.1:9"), "\(message)")
        #expect(message.contains("not allowed"), "\(message)")
        #expect(run.output.isEmpty, "nothing but the stream goes to standard output")
    }

    /// `--stdio` with standard input from /dev/null, or standard output to a file, is refused with one line saying
    /// which and what to do (the event loop cannot wait on them: it used to stop the process with a crash).
    @Test(arguments: ["< /dev/null", "> \(FileManager.default.temporaryDirectory.path)/culvert-stdio-out-\(UUID().uuidString)"])
    func stdioFromDevNullOrToAFileIsRefusedWithOneLine(redirection: String) throws {
        let port = try self.freePort()
        let server = try self.startServer(port: port, token: "t")
        defer { server.terminate(); server.waitUntilExit() }
        let shell = redirection.hasPrefix("<")
            ? "\(Self.executable.path) client http://127.0.0.1:\(port) --token t --transport websocket --stdio 127.0.0.1:1 < /dev/null 2>&1 | cat; echo status=${PIPESTATUS[0]}"
            : "echo hi | \(Self.executable.path) client http://127.0.0.1:\(port) --token t --transport websocket --stdio 127.0.0.1:1 2>&1 \(redirection) | cat; echo status=${PIPESTATUS[1]}"
        let output = ChildProcess.run("/bin/bash", ["-c", shell]) ?? ""
        #expect(output.contains("status=1"), "\(output)")
        #expect(output.contains("culvert: error: --stdio needs standard input and output to be pipes, sockets or a terminal"), "\(output)")
        #expect(output.contains(redirection.hasPrefix("<") ? "standard input is a device such as /dev/null" : "standard output is a file"), "\(output)")
        #expect(output.split(separator: "\n").count == 2, "one line, then the status: \(output)")
        if redirection.hasPrefix(">") { try? FileManager.default.removeItem(atPath: String(redirection.dropFirst(2))) }
    }

    /// `-D` through the built binary, with `--socks-user` from the environment: curl with the right credentials
    /// gets its page from nginx; bad `-D` and `--socks-user` values are one line each.
    @Test func socksProxyFromTheCommandLineCarriesCurl() async throws {
        let web = try await startWebTarget()
        defer { web.stop() }
        let port = try self.freePort()
        let server = try self.startServer(port: port, token: "t", extraArguments: ["--allow", "localhost:\(web.port)"])
        defer { server.terminate(); server.waitUntilExit() }
        let socksPort = try self.freePort()
        let client = try LoggedProcess([
            "client", "http://127.0.0.1:\(port)", "--token", "t", "--transport", "websocket", "-D", "\(socksPort)",
            "--socks-user", "bob:pw",
        ])
        defer { client.stop() }
        #expect(try await client.waitForLog("tunnel established"), "\(client.log)")
        #expect(client.log.contains("SOCKS5 proxy on 127.0.0.1:\(socksPort) (username and password required)"), "\(client.log)")
        let page = ChildProcess.run("/usr/bin/curl", [
            "-sS", "--max-time", "10", "--socks5-hostname", "bob:pw@127.0.0.1:\(socksPort)", "http://localhost:\(web.port)/cli",
        ])
        #expect(page == "nginx saw GET /cli for host localhost\n")
        #expect(!client.log.contains("pw"), "the password is never logged")

        let badPort = try self.run(["client", "http://127.0.0.1:\(port)", "-D", "70000"])
        #expect(badPort.status != 0 && badPort.standardError.contains("bad -D '70000': PORT '70000' must be a number from 0 to 65535"))
        let badUser = try self.run(["client", "http://127.0.0.1:\(port)", "-D", "0", "--socks-user", "nopassword"])
        #expect(badUser.status != 0 && badUser.standardError.contains("bad --socks-user: expected USER:PASS"))
        let clash = try self.run(["client", "http://127.0.0.1:\(port)", "-L", "9000:db:5432", "-D", "9000"])
        #expect(clash.status != 0 && clash.standardError.contains("bad -D '127.0.0.1:9000': local port 9000 is already taken by -L '127.0.0.1:9000:db:5432'"))
    }

    /// `-H` through the built binary: curl pointed at it by `http_proxy` (absolute form) and by `HTTPS_PROXY`'s
    /// CONNECT (forced with --proxytunnel, the target being plain HTTP) both get their page.
    @Test func httpProxyFromTheCommandLineServesCurlThroughItsProxyVariables() async throws {
        let web = try await startWebTarget()
        defer { web.stop() }
        let port = try self.freePort()
        let server = try self.startServer(port: port, token: "t", extraArguments: ["--allow", "localhost:\(web.port)"])
        defer { server.terminate(); server.waitUntilExit() }
        let proxyPort = try self.freePort()
        let client = try LoggedProcess(["client", "http://127.0.0.1:\(port)", "--token", "t", "--transport", "websocket", "-H", "\(proxyPort)"])
        defer { client.stop() }
        #expect(try await client.waitForLog("tunnel established"), "\(client.log)")
        #expect(client.log.contains("HTTP proxy on 127.0.0.1:\(proxyPort)"), "\(client.log)")
        let url = "http://localhost:\(web.port)"
        let plain = ChildProcess.run("/bin/sh", ["-c", "http_proxy=http://127.0.0.1:\(proxyPort) /usr/bin/curl -sS --max-time 10 \(url)/plain"])
        let tunnelled = ChildProcess.run("/bin/sh", ["-c", "http_proxy=http://127.0.0.1:\(proxyPort) /usr/bin/curl -sS --max-time 10 --proxytunnel \(url)/tunnelled"])
        #expect(plain == "nginx saw GET /plain for host localhost\n")
        #expect(tunnelled == "nginx saw GET /tunnelled for host localhost\n")
    }

    /// `-R` through the built binaries: curl on the server's side reaches nginx on the client's side. Then the client
    /// is killed (its session waits, detached, for a resumption that never comes) and started again: the new
    /// session gets the port at once, without "address already in use", and curl gets through again.
    @Test func reverseForwardCarriesCurlAndARestartedClientGetsItsPortBackAtOnce() async throws {
        let web = try await startWebTarget()
        defer { web.stop() }
        let port = try self.freePort()
        let reversePort = try self.freePort()
        let server = try LoggedProcess(["server", "--listen", "127.0.0.1:\(port)", "--token", "t", "--allow", "127.0.0.1:1", "--allow-reverse", "\(reversePort)"])
        defer { server.stop() }
        #expect(try await RealProxy.waitForListener(port: port, startedBy: server.process))
        let arguments = ["client", "http://127.0.0.1:\(port)", "--token", "t", "--transport", "websocket", "-R", "\(reversePort):localhost:\(web.port)"]
        let first = try LoggedProcess(arguments)
        #expect(try await first.waitForLog("-R: the server listens on 127.0.0.1:\(reversePort) -> localhost:\(web.port)"), "\(first.log)")
        let before = ChildProcess.run("/usr/bin/curl", ["-sS", "--max-time", "10", "http://127.0.0.1:\(reversePort)/before"])
        kill(first.process.pid, SIGKILL)
        _ = first.waitForExit()
        first.stop()

        let second = try LoggedProcess(arguments)
        defer { second.stop() }
        #expect(try await second.waitForLog("-R: the server listens on 127.0.0.1:\(reversePort)"), "\(second.log)\n\(server.log)")
        let after = ChildProcess.run("/usr/bin/curl", ["-sS", "--max-time", "10", "http://127.0.0.1:\(reversePort)/after"])
        #expect(before == "nginx saw GET /before for host 127.0.0.1\n")
        #expect(after == "nginx saw GET /after for host 127.0.0.1\n")
        #expect(server.log.contains("handing reverse listener 127.0.0.1:\(reversePort) to a new session"), "\(server.log)")
    }

    /// Mistakes in `-R` and `--allow-reverse` are one line each, naming the flag and the part that is wrong.
    @Test func reverseForwardMistakesAreOneLineEach() throws {
        let badForward = try self.run(["client", "http://127.0.0.1:1", "-R", "9000:db"])
        #expect(badForward.status != 0 && badForward.standardError.contains("bad -R '9000:db': expected [BIND:]PORT:HOST:HOSTPORT"), "\(badForward.standardError)")
        let twice = try self.run(["client", "http://127.0.0.1:1", "-R", "9000:a:1", "-R", "127.0.0.1:9000:b:2"])
        #expect(twice.status != 0 && twice.standardError.contains("is already asked for by another -R"), "\(twice.standardError)")
        let badAllow = try self.run(["server", "--listen", "127.0.0.1:0", "--token", "t", "--allow-reverse", "9000-80"])
        #expect(badAllow.status != 0 && badAllow.standardError.contains("bad --allow-reverse '9000-80': PORT '9000-80' must be a port from 1 to 65535 or a range A-B"), "\(badAllow.standardError)")
    }

    /// `-L …/udp` through the built binaries: dig asks dnsmasq through the tunnel, and gets its answer.
    @Test func udpForwardFromTheCommandLineCarriesDig() async throws {
        let dns = try await ThrowawayDNSServer.start(port: try self.freePort(), configuration: fixturesDirectory() + "/targets/dnsmasq.conf")
        defer { dns.stop() }
        let port = try self.freePort()
        let server = try self.startServer(port: port, token: "t", extraArguments: ["--allow", "127.0.0.1:\(dns.port)"])
        defer { server.terminate(); server.waitUntilExit() }
        let localPort = try self.freePort()
        let client = try LoggedProcess([
            "client", "http://127.0.0.1:\(port)", "--token", "t", "--transport", "websocket", "-L", "\(localPort):127.0.0.1:\(dns.port)/udp",
        ])
        defer { client.stop() }
        #expect(try await client.waitForLog("tunnel established"), "\(client.log)")
        #expect(client.log.contains("forwarding 127.0.0.1:\(localPort)/udp -> 127.0.0.1:\(dns.port)/udp"), "\(client.log)")
        let answer = ChildProcess.run("/usr/bin/dig", ["@127.0.0.1", "-p", "\(localPort)", "+short", "+tries=1", "+time=5", "cli.culvert.test"])
        #expect(answer == "10.1.2.3\n")
        // 1,000 queries from one dig (a batch file): every one answered.
        let batch = FileManager.default.temporaryDirectory.appendingPathComponent("culvert-dig-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: batch) }
        try (0..<1000).map { "q\($0).culvert.test" }.joined(separator: "\n").write(toFile: batch, atomically: true, encoding: .utf8)
        let answers = ChildProcess.run("/usr/bin/dig", ["@127.0.0.1", "-p", "\(localPort)", "+short", "+tries=2", "+time=5", "-f", batch]) ?? ""
        #expect(answers.split(separator: "\n").filter { $0 == "10.1.2.3" }.count == 1000, "\(answers.split(separator: "\n").count) lines")
    }
}
