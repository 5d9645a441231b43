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
    /// counted until ``release(user:)``). A user at its limit is refused, and `atLimit` is told, so that the server
    /// can end the user's sessions that wait for a client that went away (one restarted, say): the refused client
    /// retries and gets in once they have.
    public func userLookup(atLimit: @escaping @Sendable (_ user: String) -> Void = { _ in }) -> UserLookup {
        UserLookup(
            verifier: { [state] user in state.withLockedValue { $0.rules.users?[user]?.verifier } },
            admit: { [state] user in
                let refusal: String? = state.withLockedValue { state in
                    let open = state.sessionsByUser[user, default: 0]
                    if let limit = state.rules.users?[user]?.maximumSessions, open >= limit {
                        return "user \(user) has its maximum of \(limit) session\(limit == 1 ? "" : "s") (max-sessions in the users file); try again later"
                    }
                    state.sessionsByUser[user] = open + 1
                    return nil
                }
                if refusal != nil { atLimit(user) }
                return refusal
            }
        )
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
