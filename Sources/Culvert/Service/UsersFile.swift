import CulvertCore
import Foundation

/// A server's users file (`--users FILE`, TOML): one table per user, with the user's token (or its hash, as
/// `culvert hash-token` prints it), where its streams may go and its limits.
///
/// ```toml
/// [users.alice]
/// token-hash = "culvert-v1:…"
/// allow = ["db.internal:5432", "*:22"]
/// allow-reverse = ["127.0.0.1:9000-9100"]
/// max-sessions = 4
/// ```
public enum UsersFile {
    /// The keys a user's table may have.
    static let userKeys: Set<String> = ["token", "token-hash", "allow", "allow-reverse", "max-sessions"]

    /// Reads and parses the file at `path`.
    public static func load(path: String) throws(ConfigurationFileError) -> [String: UserAccount] {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigurationFileError(path: path, line: nil, key: nil, message: "cannot read it: \(describeUnreadable(path))")
        }
        return try Self.parse(text, file: path)
    }

    /// Parses a users file's text; `file` names it in errors.
    public static func parse(_ text: String, file: String) throws(ConfigurationFileError) -> [String: UserAccount] {
        let document = try TOMLFields.parse(text, file: file)
        try document.refuseUnknownKeys(["users"])
        guard let users = try document.table("users") else {
            throw document.error(nil, "no [users.NAME] table: the file names no user")
        }
        var accounts: [String: UserAccount] = [:]
        for name in users.keys.sorted() {
            guard let fields = try users.table(name) else { continue }
            guard UserAccount.isValidName(name) else {
                throw users.error(name, "a user name is 1 to 64 of A-Z, a-z, 0-9 and . _ - @")
            }
            accounts[name] = try Self.account(name, fields)
        }
        return accounts
    }

    private static func account(_ name: String, _ fields: TOMLFields) throws(ConfigurationFileError) -> UserAccount {
        try fields.refuseUnknownKeys(Self.userKeys)
        let verifier: TokenVerifier
        switch (try fields.string("token"), try fields.string("token-hash")) {
        case (let token?, nil):
            guard !token.isEmpty else { throw fields.error("token", "is empty") }
            verifier = TokenVerifier(token: token)
        case (nil, let hash?):
            guard let parsed = TokenVerifier(hashText: hash) else {
                throw fields.error("token-hash", "is not a token hash: `culvert hash-token` prints one (culvert-v1: and 128 hex digits)")
            }
            verifier = parsed
        case (.some, .some):
            throw fields.error("token-hash", "give token or token-hash, not both")
        case (nil, nil):
            throw fields.error(nil, "has no token: give token = \"…\" or token-hash = \"…\" (from `culvert hash-token`)")
        }
        var account = UserAccount(name: name, verifier: verifier)
        if let allow = try fields.strings("allow") {
            var entries: [Allowlist.Entry] = []
            for text in allow {
                if text == "*" {
                    account.allowlist = .any
                    break
                }
                do { entries.append(try Allowlist.Entry(parsing: text)) } catch { throw fields.error("allow", error.description) }
            }
            if account.allowlist == nil { account.allowlist = Allowlist(entries: entries) }
        }
        if let allowReverse = try fields.strings("allow-reverse") {
            var entries: [ReverseAllowlist.Entry] = []
            for text in allowReverse {
                do { entries.append(try ReverseAllowlist.Entry(parsing: text)) } catch { throw fields.error("allow-reverse", error.description) }
            }
            account.reverseAllowlist = ReverseAllowlist(entries: entries)
        }
        if let limit = try fields.int("max-sessions") {
            guard limit >= 1 else { throw fields.error("max-sessions", "must be 1 or more") }
            account.maximumSessions = limit
        }
        return account
    }
}

/// Why `path` cannot be read, in words: missing, a directory, no permission, or not UTF-8 text.
public func describeUnreadable(_ path: String) -> String {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { return "no such file" }
    if isDirectory.boolValue { return "it is a directory" }
    guard FileManager.default.isReadableFile(atPath: path) else {
        return "permission denied (the file must be readable by the user running culvert)"
    }
    return "it is not UTF-8 text"
}
