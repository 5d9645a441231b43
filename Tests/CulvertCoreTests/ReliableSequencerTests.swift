import CulvertCore
import NIOCore
import Testing

@Suite struct ReliableSequencerTests {
    /// Sent frames stay in the replay buffer until acknowledged, and replay starts at the peer's count.
    @Test func replayBufferHoldsUnacknowledgedFrames() throws {
        var sequencer = ReliableSequencer()
        for index in 0..<5 { sequencer.recordSent(ByteBuffer(bytes: [UInt8(index), 0, 0])) }
        #expect(sequencer.sent == 5 && sequencer.replayBytes == 15)
        try sequencer.receiveAck(2)
        #expect(sequencer.replayBytes == 9)
        let replay = try sequencer.framesToReplay(peerReceived: 3)
        #expect(replay.map { $0.getInteger(at: 0, as: UInt8.self) } == [3, 4])
    }

    /// An ACK for frames never sent is an error.
    /// A frame sent gathered (its header, then its payload as it was) counts as one frame of both parts' bytes and
    /// is replayed whole, header and payload together.
    @Test func aFrameSentGatheredIsReplayedWhole() throws {
        var sequencer = ReliableSequencer()
        sequencer.recordSent(ByteBuffer(bytes: [1, 1]))
        sequencer.recordSent(header: ByteBuffer(bytes: [2, 2, 2]), payload: ByteBuffer(bytes: [9, 9, 9, 9]))
        #expect(sequencer.sent == 2 && sequencer.replayBytes == 9)
        #expect(try sequencer.framesToReplay(peerReceived: 0) == [ByteBuffer(bytes: [1, 1]), ByteBuffer(bytes: [2, 2, 2, 9, 9, 9, 9])])
        try sequencer.receiveAck(2)
        #expect(sequencer.replayBytes == 0)
    }

    @Test func ackBeyondSentIsAnError() {
        var sequencer = ReliableSequencer()
        sequencer.recordSent(ByteBuffer(bytes: [1]))
        #expect(throws: SequencerError.ackBeyondSent(acknowledged: 2, sent: 1)) { try sequencer.receiveAck(2) }
    }

    /// An ACK is due after the configured frame count, and making one resets the count.
    @Test func ackPacing() {
        var sequencer = ReliableSequencer(ackEveryFrames: 3, ackEveryBytes: 1 << 30)
        sequencer.recordReceived(byteCount: 10)
        sequencer.recordReceived(byteCount: 10)
        #expect(!sequencer.ackDueNow && sequencer.hasUnacknowledged)
        sequencer.recordReceived(byteCount: 10)
        #expect(sequencer.ackDueNow)
        #expect(sequencer.makeAck() == .ack(received: 3))
        #expect(!sequencer.hasUnacknowledged)
    }
}

@Suite struct KeepaliveStateMachineTests {
    /// Quiet for the interval: ping; pong in time: alive (its round trip measured at the next tick); no pong within
    /// the timeout: dead. No sleeping.
    @Test func pingsWhenQuietAndDeclaresDeadWithoutPong() {
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
        var keepalive = KeepaliveStateMachine(interval: .seconds(25), timeout: .seconds(10), now: start)
        #expect(keepalive.tick(now: start + .seconds(10)) == .none)
        guard case .sendPing(let id) = keepalive.tick(now: start + .seconds(25)) else { Issue.record("no ping"); return }
        keepalive.receivedPong(id)
        #expect(keepalive.tick(now: start + .seconds(26)) == .none)
        #expect(keepalive.lastRoundTrip == .seconds(1))
        guard case .sendPing = keepalive.tick(now: start + .seconds(51)) else { Issue.record("no second ping"); return }
        guard case .declareDead = keepalive.tick(now: start + .seconds(61)) else { Issue.record("not dead"); return }
    }

    /// Traffic between ticks counts as heard at the next tick: no ping while frames keep arriving.
    @Test func trafficBetweenTicksPostponesThePing() {
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
        var keepalive = KeepaliveStateMachine(interval: .seconds(25), timeout: .seconds(10), now: start)
        for second in stride(from: 5, through: 100, by: 5) {
            keepalive.receivedAnything()
            #expect(keepalive.tick(now: start + .seconds(Int64(second))) == .none)
        }
        guard case .sendPing = keepalive.tick(now: start + .seconds(125)) else { Issue.record("no ping after silence"); return }
    }
}
