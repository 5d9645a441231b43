import CulvertCore
import NIOCore
import Testing

@Suite struct AuthenticationThrottleTests {
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    @Test func anAddressIsRefusedAfterTheLimitUntilItsOldestFailureLeavesTheWindow() {
        var throttle = AuthenticationThrottle(limit: 3, window: .seconds(60))
        for second in 0..<3 {
            #expect(throttle.retryAfter("10.0.0.1", now: self.start + .seconds(Int64(second))) == nil)
            throttle.recordFailure("10.0.0.1", now: self.start + .seconds(Int64(second)))
        }
        #expect(throttle.retryAfter("10.0.0.1", now: self.start + .seconds(10)) == .seconds(50))
        #expect(throttle.retryAfter("10.0.0.1", now: self.start + .seconds(60)) == nil)
    }

    @Test func otherAddressesAreNotAffected() {
        var throttle = AuthenticationThrottle(limit: 1, window: .seconds(60))
        throttle.recordFailure("10.0.0.1", now: self.start)
        #expect(throttle.retryAfter("10.0.0.1", now: self.start) != nil)
        #expect(throttle.retryAfter("10.0.0.2", now: self.start) == nil)
    }

    @Test func memoryIsBoundedByTheNumberOfAddresses() {
        var throttle = AuthenticationThrottle(limit: 5, window: .seconds(60), maximumAddresses: 100)
        for index in 0..<10_000 {
            throttle.recordFailure("10.0.\(index / 256).\(index % 256)", now: self.start + .milliseconds(Int64(index)))
        }
        #expect(throttle.trackedAddresses == 100)
        // The most recent failures are the ones kept.
        #expect(throttle.retryAfter("10.0.39.15", now: self.start + .seconds(11)) == nil)  // index 9999, one failure
    }
}

@Suite struct AuthenticationThrottleAttemptTests {
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    /// Attempts count when they begin: with a limit of 10, the 11th concurrent attempt is refused before any of the
    /// first ten has been checked.
    @Test func concurrentAttemptsBeyondTheLimitAreRefusedUnheard() {
        var throttle = AuthenticationThrottle(limit: 10, window: .seconds(60))
        var admitted = 0
        for _ in 0..<1_000 where throttle.beginAttempt("10.0.0.1", now: self.start) == nil { admitted += 1 }
        #expect(admitted == 10)
        #expect(throttle.attemptsUnderWay("10.0.0.1") == 10)
        #expect(throttle.beginAttempt("10.0.0.2", now: self.start) == nil)
    }

    /// A successful attempt frees its place; a failed one turns into a failure that holds its place for the window.
    @Test func finishedAttemptsFreeTheirPlaceUnlessTheyFailed() {
        var throttle = AuthenticationThrottle(limit: 2, window: .seconds(60))
        #expect(throttle.beginAttempt("a", now: self.start) == nil)
        #expect(throttle.beginAttempt("a", now: self.start) == nil)
        #expect(throttle.beginAttempt("a", now: self.start) == AuthenticationThrottle.busyRetryDelay)
        throttle.finishAttempt("a", failed: false, now: self.start)
        #expect(throttle.beginAttempt("a", now: self.start) == nil)
        throttle.finishAttempt("a", failed: true, now: self.start)
        throttle.finishAttempt("a", failed: true, now: self.start + .seconds(1))
        #expect(throttle.beginAttempt("a", now: self.start + .seconds(2)) == .seconds(58))
        #expect(throttle.beginAttempt("a", now: self.start + .seconds(61)) == nil)
        throttle.finishAttempt("a", failed: false, now: self.start + .seconds(61))
        #expect(throttle.trackedAddresses == 0)
    }
}
