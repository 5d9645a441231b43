import CulvertCore
import Testing

@Suite struct AdaptiveCompressionPolicyTests {
    /// Data that compresses well keeps being compressed.
    @Test func compressibleDataStaysCompressed() {
        var policy = AdaptiveCompressionPolicy(windowBytes: 1000)
        for _ in 0..<10 {
            let compress = policy.shouldCompress(bytes: 500)
            #expect(compress)
            policy.record(original: 500, compressed: 100)
        }
        #expect(!policy.isPaused)
    }

    /// A window worse than 0.95 pauses compression; it looks again after the recheck distance, which doubles
    /// after every failed look.
    @Test func incompressibleDataPausesAndRechecksWithBackoff() {
        var policy = AdaptiveCompressionPolicy(windowBytes: 1000, initialRecheckBytes: 2000, maximumRecheckBytes: 8000)
        policy.record(original: 1000, compressed: 990)
        #expect(policy.isPaused)
        let decisions = (0..<3).map { _ in policy.shouldCompress(bytes: 1000) }
        // Two raw frames make up the 2000-byte recheck distance; the third is compressed again.
        #expect(decisions == [false, false, true])
        policy.record(original: 1000, compressed: 1001)
        var raw = 0
        while !policy.shouldCompress(bytes: 500) { raw += 500 }
        #expect(raw == 4000)
    }
}
