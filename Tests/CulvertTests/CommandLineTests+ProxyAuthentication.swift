import CulvertTools
import Foundation
import Testing

/// The proxy's credentials as a user gives them — `--proxy-user`, `CULVERT_PROXY_USER`, a netrc file — through
/// squid demanding Digest, with the password never in the output, debug logs included.
extension CommandLineTests {
    @Test func proxyCredentialsComeFromTheFlagTheEnvironmentOrANetrcFileAndNeverShowInTheOutput() async throws {
        let squid = try await ProxyAuthenticationTests.startSquid(.digest)
        defer { squid.stop() }
        let port = try self.freePort()
        let server = try self.startServer(port: port, token: "t")
        defer {
            server.terminate()
            server.waitUntilExit()
        }
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let netrc = try scratch.write("netrc", "machine 127.0.0.1\n  login alice\n  password s3cret\n")
        let client = [
            "client", "http://127.0.0.1:\(port)", "--token", "t", "--transport", "polling", "-v", "--log-format", "text",
            "--proxy", "http://127.0.0.1:\(squid.port)", "-L", "0:127.0.0.1:1",
        ]
        let ways: [(String, [String], [String: String])] = [
            ("--proxy-user", ["--proxy-user", "alice:s3cret"], [:]),
            ("CULVERT_PROXY_USER", [], ["CULVERT_PROXY_USER": "alice:s3cret"]),
            ("--netrc FILE", ["--netrc", netrc], [:]),
        ]
        for (way, arguments, environment) in ways {
            let process = try LoggedProcess(client + arguments, environment: environment)
            defer { process.stop() }
            #expect(try await process.waitForLog("tunnel established"), "\(way): \(process.log)")
            #expect(!process.log.contains("s3cret"), "\(way) printed the password")
        }

        let (status, report) = try self.runJSON([
            "probe", "http://127.0.0.1:\(port)", "--token", "t", "--json", "--proxy", "http://127.0.0.1:\(squid.port)",
            "--proxy-user", "alice:nope",
        ])
        #expect(status == 1)
        let text = "\(report)"
        #expect(text.contains("proxy_auth") && text.contains("scheme Digest") && text.contains("refused the user and password that were sent"), "\(text)")
        #expect(!text.contains("nope"))
        let badFlag = try self.run(client + ["--proxy-user", "alice"])
        #expect(badFlag.status == 2)
        #expect(badFlag.standardError.contains("--proxy-user must be USER:PASS"), "\(badFlag.standardError)")
    }
}
