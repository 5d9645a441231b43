import Culvert
import CulvertTransport
import NIOCore
import Testing

/// The words and figures of the client's live status line.
@Suite struct ClientLiveStatusTests {
    private func status(sent: Int, received: Int, connected: Bool = true, sessions: Int = 1) -> ClientLiveStatus {
        ClientLiveStatus(
            transport: .chunked, isConnected: connected, roundTrip: .microseconds(420), openStreams: 3, bytesSent: sent,
            bytesReceived: received, sessions: sessions
        )
    }

    @Test func ratesComeFromTheBytesMovedSinceTheLastSample() {
        let line = self.status(sent: 3 << 20, received: 80 << 10).line(after: self.status(sent: 1 << 20, received: 0), elapsed: .seconds(2))
        #expect(line == "chunked · rtt 0.42 ms · 3 streams · up 1.0 MiB/s · down 40 KiB/s")
    }

    @Test func theFirstSampleAndANewSessionShowNoRateRatherThanANegativeOne() {
        #expect(self.status(sent: 5000, received: 5000).line(after: nil, elapsed: .seconds(1)).hasSuffix("up 0 B/s · down 0 B/s"))
        let afterNewSession = self.status(sent: 10, received: 10).line(after: self.status(sent: 5000, received: 5000), elapsed: .seconds(1))
        #expect(afterNewSession.hasSuffix("up 0 B/s · down 0 B/s"))
    }

    @Test func aReconnectingClientAndDrainingSessionsAreNamed() {
        let line = self.status(sent: 0, received: 0, connected: false, sessions: 3).line(after: nil, elapsed: .seconds(1))
        #expect(line == "chunked · reconnecting · rtt 0.42 ms · 3 streams · 2 draining sessions · up 0 B/s · down 0 B/s")
    }

    @Test func anUnmeasuredRoundTripIsADash() {
        var status = self.status(sent: 0, received: 0)
        status.roundTrip = nil
        #expect(status.line(after: nil, elapsed: .seconds(1)).contains("rtt - ·"))
        status.roundTrip = .milliseconds(1500)
        #expect(status.line(after: nil, elapsed: .seconds(1)).contains("rtt 1.5 s ·"))
    }
}
