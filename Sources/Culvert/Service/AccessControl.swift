public import CulvertCore
import NIOConcurrencyHelpers

/// The server's access rules in force, shared by every session on every event loop, and each user's count of
/// sessions; ``replace(_:)`` swaps in reloaded rules for the next handshake and the next stream at once.
///
/// A lock, not event-loop confinement: sessions on all of the server's loops read the same rules.
public final class AccessControl: Sendable {
    private struct State {
        var rules: AccessRules
        var sessionsByUser: [String: Int] = [:]
        /// Each user's sessions that wait for their client to come back, with how to end each.
        var detachedByUser: [String: [ObjectIdentifier: @Sendable () -> Void]] = [:]
    }

    private let state: NIOLockedValueBox<State>

    public init(_ rules: AccessRules) {
        self.state = NIOLockedValueBox(State(rules: rules))
    }

    /// The rules in force.
    public var rules: AccessRules { self.state.withLockedValue { $0.rules } }

    /// Puts `rules` in force: new sessions and new streams follow them; open ones stay.
    public func replace(_ rules: AccessRules) {
        self.state.withLockedValue { $0.rules = rules }
    }

    /// The handshake's view of the users: their verifiers, and their session limits (a session admitted here is
    /// counted until ``release(user:)``). A user at its limit is refused, and its sessions that wait for a client
    /// that went away (one restarted, say) are ended: the refused client retries and gets in once they have.
    public func userLookup() -> UserLookup {
        UserLookup(
            verifier: { [state] user in state.withLockedValue { $0.rules.users?[user]?.verifier } },
            admit: { [state] user in
                let (refusal, waiting) = state.withLockedValue { state -> (String?, [@Sendable () -> Void]) in
                    let open = state.sessionsByUser[user, default: 0]
                    if let limit = state.rules.users?[user]?.maximumSessions, open >= limit {
                        let waiting = state.detachedByUser.removeValue(forKey: user).map { Array($0.values) } ?? []
                        return ("user \(user) has its maximum of \(limit) session\(limit == 1 ? "" : "s") (max-sessions in the users file); try again later", waiting)
                    }
                    state.sessionsByUser[user] = open + 1
                    return (nil, [])
                }
                for end in waiting { end() }
                return refusal
            }
        )
    }

    /// A session of `user` lost its transport and waits to be resumed: if the user's limit refuses a new session,
    /// `end` is called (once, on whichever thread refused) to make room.
    public func sessionDetached(user: String, id: ObjectIdentifier, end: @escaping @Sendable () -> Void) {
        self.state.withLockedValue { $0.detachedByUser[user, default: [:]][id] = end }
    }

    /// A session of `user` that ``sessionDetached(user:id:end:)`` named was resumed or has ended.
    public func sessionResumedOrEnded(user: String, id: ObjectIdentifier) {
        self.state.withLockedValue { state in
            state.detachedByUser[user]?.removeValue(forKey: id)
            if state.detachedByUser[user]?.isEmpty == true { state.detachedByUser[user] = nil }
        }
    }

    /// A session of `user` that ``userLookup`` admitted has ended.
    public func release(user: String) {
        self.state.withLockedValue { state in
            let open = state.sessionsByUser[user, default: 0] - 1
            state.sessionsByUser[user] = open > 0 ? open : nil
        }
    }

    /// Sessions `user` holds now.
    public func sessions(of user: String) -> Int {
        self.state.withLockedValue { $0.sessionsByUser[user, default: 0] }
    }
}
