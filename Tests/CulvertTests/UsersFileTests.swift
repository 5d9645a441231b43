import Culvert
import CulvertCore
import Testing

/// The users file (`--users`) and the config file (`--config`): what they accept, and the line and key of every
/// mistake they refuse.
@Suite struct UsersFileTests {
    @Test func aUsersFileGivesEachUserItsTokenRightsAndLimits() throws {
        let hash = TokenVerifier(token: "bobs").hashText
        let users = try UsersFile.parse(
            """
            # the operator's users
            [users.alice]
            token = "alices"
            allow = ["db.internal:5432", "*:22"]
            allow-reverse = ["127.0.0.1:9000-9100"]
            max-sessions = 4

            [users."bob@example"]
            token-hash = "\(hash)"
            """, file: "users.toml"
        )
        let alice = try #require(users["alice"])
        #expect(alice.verifier == TokenVerifier(token: "alices"))
        #expect(alice.allowlist?.permits(TargetAddress(host: "db.internal", port: 5432)) == true)
        #expect(alice.allowlist?.permits(TargetAddress(host: "elsewhere", port: 22)) == true)
        #expect(alice.allowlist?.permits(TargetAddress(host: "db.internal", port: 5433)) == false)
        #expect(alice.reverseAllowlist?.entries.count == 1)
        #expect(alice.maximumSessions == 4)
        let bob = try #require(users["bob@example"])
        #expect(bob.verifier == TokenVerifier(token: "bobs"))
        #expect(bob.allowlist == nil && bob.maximumSessions == nil)
    }

    /// A user without `allow` falls back to the server's `--allow`; a user no longer in the file reaches nothing.
    @Test func accessRulesFallBackToTheServersListsAndRefuseUsersNotInTheFile() throws {
        let users = try UsersFile.parse("[users.alice]\ntoken = \"a\"\n[users.bob]\ntoken = \"b\"\nallow = [\"b:1\"]\n", file: "u")
        let rules = AccessRules(allowlist: Allowlist(entries: [.init(host: "shared", port: 1)]), users: users)
        #expect(rules.allowlist(for: "alice").permits(TargetAddress(host: "shared", port: 1)))
        #expect(!rules.allowlist(for: "bob").permits(TargetAddress(host: "shared", port: 1)))
        #expect(rules.allowlist(for: "bob").permits(TargetAddress(host: "b", port: 1)))
        #expect(!rules.allowlist(for: "carol").permits(TargetAddress(host: "shared", port: 1)))
        #expect(rules.allowlist(for: nil).permits(TargetAddress(host: "shared", port: 1)))
    }

    /// Every mistake is refused with the file, the line and the dotted key, and what to do.
    @Test(arguments: [
        ("[users.alice]\ntoken = \"a\"\nallwo = [\"x:1\"]\n", 3, "users.alice.allwo", "unknown key"),
        ("[users.alice]\ntoken = \"a\"\ntoken-hash = \"culvert-v1:00\"\n", 3, "users.alice.token-hash", "not both"),
        ("[users.alice]\nallow = [\"x:1\"]\n", 1, "users.alice", "has no token"),
        ("[users.alice]\ntoken-hash = \"abc\"\n", 2, "users.alice.token-hash", "culvert hash-token"),
        ("[users.alice]\ntoken = \"a\"\n\nmax-sessions = 0\n", 4, "users.alice.max-sessions", "1 or more"),
        ("[users.alice]\ntoken = \"a\"\nmax-sessions = \"four\"\n", 3, "users.alice.max-sessions", "whole number"),
        ("[users.alice]\ntoken = \"a\"\nallow = [\"no-port\"]\n", 3, "users.alice.allow", "HOST:PORT"),
        ("[users.alice]\ntoken = \"a\"\nallow = [\"x:1\", 2]\n", 3, "users.alice.allow", "array of strings"),
        ("[users.\"al ice\"]\ntoken = \"a\"\n", 1, "users.\"al ice\"", "user name"),
        ("[users.alice]\ntoken = \"a\"\n[groups.x]\n", 3, "groups", "unknown key"),
        ("[users.alice]\ntoken = \n", 2, nil, "not valid TOML"),
        ("# nobody\n", nil, nil, "names no user"),
    ] as [(String, Int?, String?, String)])
    func aBadUsersFileIsRefusedWithTheLineAndTheKey(text: String, line: Int?, key: String?, words: String) {
        do {
            _ = try UsersFile.parse(text, file: "users.toml")
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.line == line, "\(error)")
            #expect(error.key == key, "\(error)")
            #expect(error.message.contains(words), "\(error)")
            #expect(error.description.hasPrefix("users.toml"), "\(error)")
        }
    }

    /// A config file becomes the flags it names; a key the command line gives is left out, so the command line wins
    /// (for repeatable flags too); false leaves a flag out.
    @Test func aConfigFileBecomesFlagsAndTheCommandLineWins() throws {
        let file = try FlagFile.parse(
            """
            listen = "0.0.0.0:8080"
            allow = ["a:1", "b:2"]
            max-sessions = 8
            resume-grace = 1.5
            no-compress = true
            allow-any = false
            """, file: "server.toml", commandLine: ["--allow", "c:3", "--max-sessions=2"]
        )
        #expect(file.arguments == ["--listen", "0.0.0.0:8080", "--no-compress", "--resume-grace", "1.5"])
        #expect(file.settings.first { $0.key == "resume-grace" }?.line == 4)
    }

    /// The file's line and key are found for an error the argument parser reports about one of its values.
    @Test func anArgumentErrorIsTracedToItsKeyAndLine() throws {
        let file = try FlagFile.parse("listen = \"x\"\nallow = \"a:1\"\nallow-any = true\nmax-sessions = \"many\"\n", file: "f", commandLine: [])
        #expect(file.place(ofArgumentError: "The value 'many' is invalid for '--max-sessions <max-sessions>'")?.line == 4)
        #expect(file.place(ofArgumentError: "Unknown option '--allow-any'")?.key == "allow-any")
        #expect(file.place(ofArgumentError: "Unexpected argument 'x'")?.key == "listen")
    }

    @Test(arguments: [
        ("config = \"other.toml\"\n", 1, "config", "may not be set"),
        ("listen = \"x\"\n[tls]\ncert = \"c\"\n", 2, "tls", "not a table"),
        ("listen = 2026-12-03\n", 1, "listen", "not a date"),
    ] as [(String, Int, String, String)])
    func aConfigFileKeyThatCannotBeAFlagIsRefused(text: String, line: Int, key: String, words: String) {
        do {
            _ = try FlagFile.parse(text, file: "server.toml", commandLine: [])
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.line == line, "\(error)")
            #expect(error.key == key, "\(error)")
            #expect(error.message.contains(words), "\(error)")
        }
    }
}
