/// The multiplexer's record of one stream: its phase, half-close state and both directions' flow-control credit.
struct StreamState: Hashable, Sendable {
    enum Phase: Hashable, Sendable {
        /// This side sent OPEN and waits for OPEN_OK or OPEN_FAIL.
        case opening
        /// The peer sent OPEN; this side is connecting to the target.
        case accepting
        /// Data may flow.
        case open
    }

    var phase: Phase
    /// Bytes this side may still send.
    var sendCredit: Int
    /// This side sent FIN.
    var localFinished = false
    /// The peer sent FIN.
    var remoteFinished = false

    /// The receive window this stream aims for; grows while the local reader keeps up.
    var windowTarget: Int
    /// Credit granted to the peer that it has not used yet.
    var peerCredit: Int
    /// Bytes received and handed to the local side that it has not consumed yet.
    var unconsumed = 0
    /// Bytes consumed since the last WINDOW frame.
    var consumedSinceUpdate = 0

    /// Receive memory this stream holds against the session limit.
    var committedMemory: Int { self.peerCredit + self.unconsumed }

    /// Both directions finished and every received byte consumed.
    var isComplete: Bool { self.localFinished && self.remoteFinished && self.unconsumed == 0 }
}
