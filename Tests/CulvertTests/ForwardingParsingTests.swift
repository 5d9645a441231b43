import Culvert
import CulvertCore
import Testing

@Suite struct ForwardingParsingTests {
    /// `PORT:HOST:HOSTPORT` binds 127.0.0.1; `BIND:PORT:HOST:HOSTPORT` and bracketed IPv6 work.
    @Test func forwardSpecsParse() throws {
        #expect(try ForwardSpec(parsing: "8022:db.internal:5432")
            == ForwardSpec(bindHost: "127.0.0.1", bindPort: 8022, target: .init(host: "db.internal", port: 5432)))
        #expect(try ForwardSpec(parsing: "0.0.0.0:2222:10.0.0.5:22")
            == ForwardSpec(bindHost: "0.0.0.0", bindPort: 2222, target: .init(host: "10.0.0.5", port: 22)))
        #expect(try ForwardSpec(parsing: "[::1]:9000:[fd00::5]:80")
            == ForwardSpec(bindHost: "::1", bindPort: 9000, target: .init(host: "fd00::5", port: 80)))
        // A /udp suffix forwards datagrams; /tcp, the default, may be written out.
        #expect(try ForwardSpec(parsing: "5353:10.0.0.2:53/udp")
            == ForwardSpec(bindHost: "127.0.0.1", bindPort: 5353, target: .init(host: "10.0.0.2", port: 53, transport: .udp)))
        #expect(try ForwardSpec(parsing: "8022:db.internal:5432/TCP") == ForwardSpec(parsing: "8022:db.internal:5432"))
        #expect(try ForwardSpec(parsing: "5353:10.0.0.2:53/udp").text == "127.0.0.1:5353:10.0.0.2:53/udp")
    }

    /// Each malformed -L names the part that is wrong.
    @Test func badForwardSpecsNameThePart() {
        let cases: [(String, String)] = [
            ("8022:db", "expected [BIND:]PORT:HOST:HOSTPORT"),
            ("abc:db:5432", "PORT 'abc'"),
            ("8022:db:0", "HOSTPORT '0'"),
            ("8022::5432", "HOST is empty"),
            ("8022:db:99999", "HOSTPORT '99999'"),
            ("[::1:9000:h:80", "unclosed '['"),
            ("5353:dns:53/sctp", "unknown protocol 'sctp' (use /tcp, the default, or /udp)"),
        ]
        for (text, fragment) in cases {
            do {
                _ = try ForwardSpec(parsing: text)
                Issue.record("\(text) parsed")
            } catch {
                #expect(error.description.contains(fragment), "\(text): \(error)")
            }
        }
    }

    /// Allowlist entries: exact, any host, any port, ranges, IPv6; host names match case-insensitively.
    @Test func allowlistMatching() throws {
        let list = Allowlist(entries: try ["db:5432", "*:22", "web:8000-8080", "[::1]:*"].map { try Allowlist.Entry(parsing: $0) })
        #expect(list.permits(.init(host: "DB", port: 5432)))
        #expect(!list.permits(.init(host: "db", port: 5433)))
        #expect(list.permits(.init(host: "anything", port: 22)))
        #expect(list.permits(.init(host: "web", port: 8080)))
        #expect(!list.permits(.init(host: "web", port: 8081)))
        #expect(list.permits(.init(host: "::1", port: 1)))
        #expect(!Allowlist().permits(.init(host: "db", port: 5432)))
        #expect(Allowlist.any.permits(.init(host: "db", port: 5432)))
        // Names match as the client sent them, never through what they resolve to (docs/SECURITY.md says why).
        let byName = Allowlist(entries: [try Allowlist.Entry(parsing: "localhost:6000")])
        #expect(byName.permits(.init(host: "localhost", port: 6000)))
        #expect(!byName.permits(.init(host: "127.0.0.1", port: 6000)))
        let byAddress = Allowlist(entries: [try Allowlist.Entry(parsing: "[2001:db8::1]:443")])
        #expect(byAddress.permits(.init(host: "2001:db8::1", port: 443)))
        #expect(!byAddress.permits(.init(host: "2001:db8::2", port: 443)))
    }

    /// Bad --allow entries are refused with the reason.
    @Test func badAllowEntries() {
        for text in ["db", "db:0", "db:9-1", "db:x", ":22"] {
            #expect(throws: ForwardingError.self, "\(text)") { _ = try Allowlist.Entry(parsing: text) }
        }
    }

    /// Host names fold case in ASCII only: KELVIN SIGN (U+212A) does not pass an entry for `k8s.example`, while
    /// `K8S.EXAMPLE` does.
    @Test func allowlistFoldsCaseInASCIIOnly() throws {
        let allowlist = Allowlist(entries: [try Allowlist.Entry(parsing: "k8s.example:443")])
        #expect(allowlist.permits(TargetAddress(host: "K8S.EXAMPLE", port: 443)))
        #expect(!allowlist.permits(TargetAddress(host: "\u{212A}8s.example", port: 443)))
    }
}
