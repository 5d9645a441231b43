import Culvert
import NIOConcurrencyHelpers
import Testing

/// ``StateChangeSignal``: waiters wake on the owner's notifications, never on a timer.
struct StateChangeSignalTests {
    @Test func aConditionThatHoldsAlreadyIsMetAtOnce() async {
        let signal = StateChangeSignal()
        #expect(await signal.wait(timeout: .seconds(60)) { true })
    }

    @Test func aWaiterWakesOnTheNotificationAfterTheChangeThatMeetsItsCondition() async {
        let signal = StateChangeSignal()
        let value = NIOLockedValueBox(0)
        let checks = NIOLockedValueBox(0)
        let waiter = Task {
            await signal.wait(timeout: .seconds(60)) {
                checks.withLockedValue { $0 += 1 }
                return value.withLockedValue { $0 } >= 3
            }
        }
        // Each change is made and announced only once the waiter has read the value before it.
        for step in 1...3 {
            while checks.withLockedValue({ $0 }) < step { await Task.yield() }
            value.withLockedValue { $0 = step }
            signal.notify()
        }
        #expect(await waiter.value)
        #expect(checks.withLockedValue { $0 } == 4)
    }

    @Test func aConditionNeverMetIsGivenUpAtTheTimeout() async {
        let signal = StateChangeSignal()
        let start = ContinuousClock.now
        #expect(await signal.wait(timeout: .milliseconds(50)) { false } == false)
        #expect(ContinuousClock.now - start >= .milliseconds(50))
    }

    @Test func aChangeWithoutANotificationDoesNotWakeTheWaiter() async {
        let signal = StateChangeSignal()
        let value = NIOLockedValueBox(false)
        let checks = NIOLockedValueBox(0)
        let waiter = Task {
            await signal.wait(timeout: .milliseconds(200)) {
                checks.withLockedValue { $0 += 1 }
                return value.withLockedValue { $0 }
            }
        }
        while checks.withLockedValue({ $0 }) < 1 { await Task.yield() }
        value.withLockedValue { $0 = true }
        // Met only by the last look at the timeout: nothing read the value in between.
        #expect(await waiter.value)
        #expect(checks.withLockedValue { $0 } == 2)
    }
}
