import CulvertCore
import NIOCore
import Testing

struct ReconnectBackoffTests {
    /// With the jitter at its top, delays double from 100 ms and stop at the 30 s cap; at its bottom, they are half.
    @Test func delaysDoubleUpToTheCapWithJitter() {
        var top = ReconnectBackoff(random: { $0.upperBound })
        let start = NIODeadline.uptimeNanoseconds(0)
        let delays = (0..<12).map { _ in top.nextDelay(now: start).nanoseconds / 1_000_000 }
        #expect(delays == [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000])
        var bottom = ReconnectBackoff(random: { $0.lowerBound })
        #expect(bottom.nextDelay(now: start) == .milliseconds(50))
    }

    /// The count starts over only after a connection stayed up for the stable time.
    @Test func onlyAStableConnectionResetsTheBackoff() {
        var backoff = ReconnectBackoff(stableAfter: .seconds(10), random: { $0.upperBound })
        let start = NIODeadline.uptimeNanoseconds(0)
        _ = backoff.nextDelay(now: start)
        _ = backoff.nextDelay(now: start)
        backoff.connected(now: start)
        // Cut again after 1 s: still backing off.
        #expect(backoff.nextDelay(now: start + .seconds(1)) == .milliseconds(400))
        backoff.connected(now: start + .seconds(2))
        // Up for 10 s: back to the first delay.
        #expect(backoff.nextDelay(now: start + .seconds(12)) == .milliseconds(100))
    }
}
