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
