/// A netrc file in curl's reading (and ftp's before it): whitespace-separated tokens, `machine NAME` or `default`
/// followed by `login USER` and `password PASS` (`account` ignored, `macdef` skipped to its blank line), quoted
/// values with backslash escapes. The proxy's credentials come from the entry of its host, else from `default`.
///
/// Hand-written: a few dozen lines, and no package on the machine reads netrc.
public struct NetrcFile: Sendable {
    public struct Entry: Hashable, Sendable {
        /// nil for `default`.
        public var machine: String?
        public var login: String?
        public var password: String?
    }

    public let entries: [Entry]

    public init(text: String) {
        var entries: [Entry] = []
        var tokens = Self.tokens(text)[...]
        while let token = tokens.popFirst() {
            switch token {
            case "machine":
                entries.append(Entry(machine: tokens.popFirst()))
            case "default":
                entries.append(Entry(machine: nil))
            case "login":
                let value = tokens.popFirst()
                if !entries.isEmpty { entries[entries.count - 1].login = value }
            case "password":
                let value = tokens.popFirst()
                if !entries.isEmpty { entries[entries.count - 1].password = value }
            case "account":
                _ = tokens.popFirst()
            default:
                break
            }
        }
        self.entries = entries
    }

    /// The login and password for `host`: its `machine` entry (names compared without case), else `default`.
    public func credentials(for host: String) -> (login: String, password: String)? {
        let entry =
            self.entries.first { $0.machine?.lowercased() == host.lowercased() } ?? self.entries.first { $0.machine == nil }
        guard let entry, let login = entry.login else { return nil }
        return (login, entry.password ?? "")
    }

    /// The tokens, with quotes and escapes undone and `macdef` bodies (up to a blank line) left out.
    private static func tokens(_ text: String) -> [String] {
        var tokens: [String] = []
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false)[...]
        while let line = lines.popFirst() {
            var current = ""
            var inToken = false
            var quoted = false
            var escaped = false
            for character in line {
                if escaped {
                    current.append(character)
                    escaped = false
                } else if character == "\\" {
                    escaped = true
                    inToken = true
                } else if character == "\"" {
                    quoted.toggle()
                    inToken = true
                } else if !quoted && (character == " " || character == "\t" || character == "\r") {
                    if inToken { tokens.append(current) }
                    current = ""
                    inToken = false
                } else if !quoted && character == "#" && !inToken {
                    break
                } else {
                    current.append(character)
                    inToken = true
                }
            }
            if inToken { tokens.append(current) }
            if tokens.count >= 2, tokens[tokens.count - 2] == "macdef" {
                // A macro's body runs to the next blank line.
                while let body = lines.popFirst(), !body.allSatisfy({ $0 == " " || $0 == "\t" || $0 == "\r" }) {}
            }
        }
        return tokens
    }
}
