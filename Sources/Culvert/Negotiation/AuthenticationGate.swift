import NIOConcurrencyHelpers

/// Lets one probe at a time prove the token until one is accepted, so that a run of `culvert probe` (or `auto`'s
/// negotiation) with a wrong token costs the server's authentication throttle one failure, not one per transport:
/// behind a company NAT the throttle's limit is shared by everyone at that address.
///
/// The first probe whose transport is up goes ahead; the others wait for its verdict. Accepted: they all go ahead at
/// once. Refused: they report the refusal without sending a proof. Inconclusive (its transport failed before the
/// server judged the proof): the next waiter goes ahead.
final class AuthenticationGate: Sendable {
    enum Verdict: Sendable {
        case proceed
        /// The token was refused over another transport; the text says why.
        case refused(String)
    }

    private enum Phase {
        case open
        case trying
        case accepted
        case refused(String)
    }

    private struct State {
        var phase = Phase.open
        var waiters: [(id: Int, continuation: CheckedContinuation<Verdict, Never>)] = []
        var nextWaiterID = 0
    }

    private let state = NIOLockedValueBox(State())

    /// Probes waiting for a verdict now.
    var waitingCount: Int { self.state.withLockedValue { $0.waiters.count } }

    /// Waits until this probe may send its proof, or the token has been refused over another transport.
    /// A cancelled waiter goes ahead (its probe ends anyway).
    func enter() async -> Verdict {
        let id = self.state.withLockedValue { state in
            defer { state.nextWaiterID += 1 }
            return state.nextWaiterID
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let verdict: Verdict? = self.state.withLockedValue { state in
                    switch state.phase {
                    case .open:
                        state.phase = .trying
                        return .proceed
                    case .accepted:
                        return .proceed
                    case .refused(let reason):
                        return .refused(reason)
                    case .trying where Task.isCancelled:
                        return .proceed
                    case .trying:
                        state.waiters.append((id, continuation))
                        return nil
                    }
                }
                if let verdict { continuation.resume(returning: verdict) }
            }
        } onCancel: {
            let waiter = self.state.withLockedValue { state in
                state.waiters.firstIndex { $0.id == id }.map { state.waiters.remove(at: $0).continuation }
            }
            waiter?.resume(returning: .proceed)
        }
    }

    /// The server accepted the proof: every waiter goes ahead.
    func accepted() {
        let waiters = self.state.withLockedValue { state in
            state.phase = .accepted
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.continuation.resume(returning: .proceed) }
    }

    /// The server refused the proof: every waiter reports `reason` instead of trying.
    func refused(_ reason: String) {
        let waiters = self.state.withLockedValue { state in
            state.phase = .refused(reason)
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.continuation.resume(returning: .refused(reason)) }
    }

    /// The probe that went ahead ended before the server judged its proof: the next waiter goes ahead.
    func inconclusive() {
        let next = self.state.withLockedValue { state -> CheckedContinuation<Verdict, Never>? in
            guard case .trying = state.phase else { return nil }
            guard !state.waiters.isEmpty else {
                state.phase = .open
                return nil
            }
            return state.waiters.removeFirst().continuation
        }
        next?.resume(returning: .proceed)
    }
}
