import NIOConcurrencyHelpers

/// Wakes the tasks that wait for a condition on an object's state each time that state changes, so that callers
/// (an application embedding the library, the tests) await the condition instead of polling for it.
///
/// The owner calls ``notify()`` after every change a waiter could care about; a waiter's condition is checked at
/// once and then after each notification, never on a timer.
public final class StateChangeSignal: Sendable {
    private struct Waiters {
        var nextID = 0
        var continuations: [Int: AsyncStream<Void>.Continuation] = [:]
    }

    private let waiters = NIOLockedValueBox(Waiters())

    public init() {}

    /// Wakes every waiter to check its condition again. Call it after the change, outside the owner's locks.
    public func notify() {
        let continuations = self.waiters.withLockedValue { Array($0.continuations.values) }
        for continuation in continuations { continuation.yield() }
    }

    /// Returns true as soon as `condition` holds (checked now and after every change), or false once `timeout` has
    /// passed without it holding (the timeout is a deadline for a failing caller, not a wait for the change). The
    /// condition may hop to a loop to read what lives there.
    public func wait(timeout: Duration, until condition: @escaping @Sendable () async -> Bool) async -> Bool {
        // At most one pending wake-up: the condition is read afresh when the waiter gets to it.
        let (changes, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let id = self.waiters.withLockedValue { waiters in
            defer { waiters.nextID += 1 }
            waiters.continuations[waiters.nextID] = continuation
            return waiters.nextID
        }
        defer {
            self.waiters.withLockedValue { _ = $0.continuations.removeValue(forKey: id) }
            continuation.finish()
        }
        // Registered before the first check, so a change between the check and the wait still wakes it.
        if await condition() { return true }
        let held = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                for await _ in changes {
                    if await condition() { return true }
                }
                return false
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
        if held { return true }
        return await condition()
    }
}
