public import CulvertCore

/// One user of a server's users file: how its token is checked, where its streams may go, and its limits.
public struct UserAccount: Sendable {
    public var name: String
    public var verifier: TokenVerifier
    /// Targets this user's streams may reach; nil: the server's own `--allow` list.
    public var allowlist: Allowlist?
    /// Where this user may open reverse listeners; nil: the server's own `--allow-reverse` list.
    public var reverseAllowlist: ReverseAllowlist?
    /// Sessions this user may hold at once; nil: no limit of its own.
    public var maximumSessions: Int?

    public init(
        name: String, verifier: TokenVerifier, allowlist: Allowlist? = nil, reverseAllowlist: ReverseAllowlist? = nil,
        maximumSessions: Int? = nil
    ) {
        self.name = name
        self.verifier = verifier
        self.allowlist = allowlist
        self.reverseAllowlist = reverseAllowlist
        self.maximumSessions = maximumSessions
    }

    /// Whether `name` can be a user name: 1 to 64 of A–Z, a–z, 0–9 and `.`, `_`, `-`, `@`.
    public static func isValidName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        return (1...Hello.maximumUserLength).contains(bytes.count) && bytes.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"), UInt8(ascii: "@"):
                true
            default:
                false
            }
        }
    }
}
