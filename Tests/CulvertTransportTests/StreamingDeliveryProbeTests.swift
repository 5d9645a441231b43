import CulvertTransport
import Testing

/// How the delivery probe judges the arrival times of chunks sent 50 ms apart.
@Suite struct StreamingDeliveryProbeTests {
    @Test func chunksArrivingAtTheirPaceAreAsSent() {
        let arrivals = (0..<8).map { 0.010 + Double($0) * 0.050 }
        #expect(StreamingDeliveryProbe.verdict(arrivals: arrivals, interval: 0.050) == .asSent)
    }

    @Test func oneHiccupIsTolerated() {
        var arrivals = (0..<8).map { Double($0) * 0.050 }
        arrivals[3] = arrivals[4] - 0.001  // one chunk late, arriving with the next
        #expect(StreamingDeliveryProbe.verdict(arrivals: arrivals, interval: 0.050) == .asSent)
    }

    @Test func allChunksAtOnceMeansTheResponseWasHeld() {
        let arrivals = Array(repeating: 0.360, count: 8)
        #expect(StreamingDeliveryProbe.verdict(arrivals: arrivals, interval: 0.050) == .heldUntilEnd)
    }

    @Test func chunksReleasedEvery200MillisecondsAreBursts() {
        // Sent at 0, 50, …, 350 ms; a proxy releases what it holds at 200 and 400 ms.
        let arrivals = (0..<8).map { Double($0) * 0.050 <= 0.200 ? 0.200 : 0.400 }
        #expect(StreamingDeliveryProbe.verdict(arrivals: arrivals, interval: 0.050) == .bursts(together: 6, gaps: 7))
    }

    @Test func aSingleChunkTellsNothing() {
        #expect(StreamingDeliveryProbe.verdict(arrivals: [0.1], interval: 0.050) == .asSent)
    }
}
