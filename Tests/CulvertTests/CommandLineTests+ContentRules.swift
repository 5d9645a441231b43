import CulvertTools
import Foundation
import Testing

/// Through squid refusing binary bodies (`fixtures/proxies/squid-forward-content-rules.conf`): `culvert probe --json`
/// reports the body shape chunked and polling settled on, `--body-shape binary` names the refusal
/// `content_refused`, and a client forced to binary bodies stops at once saying what was refused and what to try.
extension CommandLineTests {
    @Test func probeReportsTheBodyShapeAndAClientForcedToBinaryStopsSayingItWasRefused() async throws {
        let squid = try await RealProxy.start(.squid, configuration: fixturesDirectory() + "/proxies/squid-forward-content-rules.conf")
        defer { squid.stop() }
        let port = try self.freePort()
        let server = try self.startServer(port: port, token: "t")
        defer {
            server.terminate()
            server.waitUntilExit()
        }
        let probe = ["probe", "http://127.0.0.1:\(port)", "--token", "t", "--json", "--proxy", "http://127.0.0.1:\(squid.port)"]
        func rows(_ report: [String: Any]) -> [String: [String: Any]] {
            let transports = report["transports"] as? [[String: Any]] ?? []
            return Dictionary(uniqueKeysWithValues: transports.map { ($0["name"] as? String ?? "", $0) })
        }

        let (status, report) = try self.runJSON(probe)
        #expect(status == 0)
        #expect(report["choice"] as? String == "chunked", "\(report)")
        for kind in ["chunked", "polling"] {
            #expect(rows(report)[kind]?["body"] as? String == "text", "\(kind): \(report)")
        }
        #expect(rows(report)["websocket"]?["body"] is NSNull, "\(report)")

        let (forcedStatus, forced) = try self.runJSON(probe + ["--body-shape", "binary"])
        #expect(forcedStatus == 1)
        for kind in ["chunked", "polling"] {
            #expect(rows(forced)[kind]?["failure"] as? String == "content_refused", "\(kind): \(forced)")
            let detail = rows(forced)[kind]?["detail"] as? String
            #expect(detail?.contains("application/octet-stream bodies answered 403") == true, "\(forced)")
        }

        let client = try self.run([
            "client", "http://127.0.0.1:\(port)", "--token", "t", "--transport", "chunked", "--body-shape", "binary",
            "--proxy", "http://127.0.0.1:\(squid.port)", "-L", "0:127.0.0.1:1",
        ])
        #expect(client.status != 0)
        #expect(client.standardError.contains("content rules refused its bodies"), "\(client.standardError)")
        #expect(client.standardError.contains("try another --transport"), "\(client.standardError)")
    }
}
