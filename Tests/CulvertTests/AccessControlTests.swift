import CulvertCore
import NIOConcurrencyHelpers
import Testing

@testable import Culvert

/// A user's session limit, and the sessions that wait for their client: those are the ones ended to make room.
@Suite struct AccessControlTests {
    private final class Waiting: Sendable {
        let ended = NIOLockedValueBox(0)
    }

    private func control(limit: Int) -> AccessControl {
        let alice = UserAccount(name: "alice", verifier: TokenVerifier(token: "a"), maximumSessions: limit)
        let bob = UserAccount(name: "bob", verifier: TokenVerifier(token: "b"), maximumSessions: limit)
        return AccessControl(AccessRules(allowlist: Allowlist(), users: ["alice": alice, "bob": bob]))
    }

    @Test func aUserAtItsLimitIsRefusedAndOnlyItsWaitingSessionsAreEnded() {
        let access = self.control(limit: 1)
        let lookup = access.userLookup()
        let alicesWaiting = Waiting(), bobsWaiting = Waiting()
        #expect(lookup.admit("alice") == nil)
        #expect(lookup.admit("bob") == nil)
        let aliceSession = ObjectIdentifier(alicesWaiting), bobSession = ObjectIdentifier(bobsWaiting)
        access.sessionDetached(user: "alice", id: aliceSession) { alicesWaiting.ended.withLockedValue { $0 += 1 } }
        access.sessionDetached(user: "bob", id: bobSession) { bobsWaiting.ended.withLockedValue { $0 += 1 } }

        let refusal = lookup.admit("alice")
        #expect(refusal?.contains("maximum of 1 session") == true)
        #expect(alicesWaiting.ended.withLockedValue { $0 } == 1)
        #expect(bobsWaiting.ended.withLockedValue { $0 } == 0)
        // Bob's waiting session is still known: Bob's own refusal ends it.
        #expect(lookup.admit("bob") != nil)
        #expect(bobsWaiting.ended.withLockedValue { $0 } == 1)

        // The ended session gives its place back; the client that knocked gets in on its next try.
        access.release(user: "alice")
        #expect(lookup.admit("alice") == nil)
        // A second refusal has nothing left to end.
        #expect(lookup.admit("alice") != nil)
        #expect(alicesWaiting.ended.withLockedValue { $0 } == 1)
    }

    @Test func aResumedSessionIsNoLongerEndedToMakeRoom() {
        let access = self.control(limit: 1)
        let lookup = access.userLookup()
        let waiting = Waiting()
        #expect(lookup.admit("alice") == nil)
        access.sessionDetached(user: "alice", id: ObjectIdentifier(waiting)) { waiting.ended.withLockedValue { $0 += 1 } }
        access.sessionResumedOrEnded(user: "alice", id: ObjectIdentifier(waiting))
        #expect(lookup.admit("alice") != nil)
        #expect(waiting.ended.withLockedValue { $0 } == 0)
    }

    @Test func aUserBelowItsLimitLeavesItsWaitingSessionsAlone() {
        let access = self.control(limit: 2)
        let lookup = access.userLookup()
        let waiting = Waiting()
        #expect(lookup.admit("alice") == nil)
        access.sessionDetached(user: "alice", id: ObjectIdentifier(waiting)) { waiting.ended.withLockedValue { $0 += 1 } }
        #expect(lookup.admit("alice") == nil)
        #expect(waiting.ended.withLockedValue { $0 } == 0)
        #expect(access.sessions(of: "alice") == 2)
    }
}
