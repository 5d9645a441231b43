import CulvertTransport
import Testing

/// How the delivery probe judges the arrival times of chunks sent 50 ms apart.
@Suite struct StreamingDeliveryProbeTests {
    @Test func chunksArrivingAtTheirPaceAreAsSent() {
        let arrivals = (0..<8).map { 0.010 + Double($0) * 0.050 }
        #expect(StreamingDeliveryProbe.verdict(arrivals: arrivals, interval: 0.050) == .asSent)
    }

    @Test func aBusyMachinesLateWakeUpsAreTolerated() {
        var arrivals = (0..<8).map { Double($0) * 0.050 }
        // Two stalls: chunk 1 arrives with chunk 2, chunks 4 and 5 with chunk 6 (four deliveries of eight remain
        // apart: 0, 1+2, 3, 4+5+6, 7 is five).
        arrivals[1] = arrivals[2] - 0.001
        arrivals[4] = arrivals[6] - 0.002
        arrivals[5] = arrivals[6] - 0.001
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

    @Test func eitherOfTwoRunsArrivingAsSentMeansThePathStreams() {
        #expect(StreamingDeliveryProbe.combined(.heldUntilEnd, .asSent) == .asSent)
        #expect(StreamingDeliveryProbe.combined(.bursts(together: 6, gaps: 7), .asSent) == .asSent)
    }

    @Test func aBurstInEitherRunBeatsHeldUntilTheEnd() {
        #expect(StreamingDeliveryProbe.combined(.heldUntilEnd, .bursts(together: 6, gaps: 7)) == .bursts(together: 6, gaps: 7))
        #expect(StreamingDeliveryProbe.combined(.bursts(together: 5, gaps: 7), .heldUntilEnd) == .bursts(together: 5, gaps: 7))
    }

    @Test func twoRunsHeldUntilTheEndAreABufferingPath() {
        #expect(StreamingDeliveryProbe.combined(.heldUntilEnd, .heldUntilEnd) == .heldUntilEnd)
    }
}
