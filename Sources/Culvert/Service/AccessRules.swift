/// What a server lets clients do, as one value a reload replaces whole: where streams may go, where reverse
/// listeners may open, with a users file each user's token and rights, and the server-wide admission limits.
public struct AccessRules: Sendable {
    /// The server's `--allow` list: for clients of the shared token, and users whose entry has no `allow`.
    public var allowlist: Allowlist
    /// The server's `--allow-reverse` list, with the same fallback.
    public var reverseAllowlist: ReverseAllowlist
    /// The users file's users by name; nil without one.
    public var users: [String: UserAccount]?
    /// Sessions at once on the server (`--max-sessions`); past it new ones are refused with GOAWAY `overloaded`.
    public var maximumSessions: Int
    /// Failed authentications an address may have per minute before its new sessions are refused unheard.
    public var authenticationFailuresPerMinute: Int

    public init(
        allowlist: Allowlist, reverseAllowlist: ReverseAllowlist = ReverseAllowlist(), users: [String: UserAccount]? = nil,
        maximumSessions: Int = 1024, authenticationFailuresPerMinute: Int = 10
    ) {
        self.allowlist = allowlist
        self.reverseAllowlist = reverseAllowlist
        self.users = users
        self.maximumSessions = maximumSessions
        self.authenticationFailuresPerMinute = authenticationFailuresPerMinute
    }

    /// The targets `user`'s streams may reach (nil: a client of the shared token). A user no longer in the file may
    /// reach nothing.
    public func allowlist(for user: String?) -> Allowlist {
        guard let user else { return self.allowlist }
        guard let account = self.users?[user] else { return Allowlist() }
        return account.allowlist ?? self.allowlist
    }

    /// Where `user` may open reverse listeners, on the same terms as ``allowlist(for:)``.
    public func reverseAllowlist(for user: String?) -> ReverseAllowlist {
        guard let user else { return self.reverseAllowlist }
        guard let account = self.users?[user] else { return ReverseAllowlist() }
        return account.reverseAllowlist ?? self.reverseAllowlist
    }
}
