public import NIOCore

/// Decides when to ping and when the transport is dead, from times passed in (no clock of its own).
///
/// The driver calls ``tick(now:)`` on a timer, and ``receivedAnything()`` / ``receivedPong(_:)`` as frames arrive.
/// Those two only set a flag (no clock read per message): the next tick takes its time as the last time something
/// arrived, so silence is measured to within one tick. A ping is sent after ``interval`` without inbound traffic;
/// the transport is declared dead when its pong has not come within ``timeout``.
public struct KeepaliveStateMachine: Sendable {
    public enum Action: Hashable, Sendable {
        case none
        case sendPing(UInt64)
        /// No pong within the timeout: the transport is dead.
        case declareDead(silentFor: TimeAmount)
    }

    public let interval: TimeAmount
    public let timeout: TimeAmount
    private var lastInbound: NIODeadline
    /// Something arrived since the last tick.
    private var heardSinceTick = false
    /// The pong for the outstanding ping arrived since the last tick.
    private var pongSinceTick = false
    private var outstanding: (id: UInt64, sentAt: NIODeadline)?
    private var nextPingID: UInt64 = 1
    /// The round-trip time measured by the last pong (to within one tick).
    public private(set) var lastRoundTrip: TimeAmount?

    public init(interval: TimeAmount, timeout: TimeAmount, now: NIODeadline) {
        self.interval = interval
        self.timeout = timeout
        self.lastInbound = now
    }

    public mutating func receivedAnything() {
        self.heardSinceTick = true
    }

    public mutating func receivedPong(_ id: UInt64) {
        self.heardSinceTick = true
        if let outstanding = self.outstanding, outstanding.id == id { self.pongSinceTick = true }
    }

    public mutating func tick(now: NIODeadline) -> Action {
        if self.heardSinceTick {
            self.heardSinceTick = false
            self.lastInbound = now
        }
        if let outstanding = self.outstanding {
            if self.pongSinceTick {
                self.pongSinceTick = false
                self.lastRoundTrip = now - outstanding.sentAt
                self.outstanding = nil
            } else if now - outstanding.sentAt >= self.timeout {
                return .declareDead(silentFor: now - self.lastInbound)
            } else {
                return .none
            }
        }
        guard now - self.lastInbound >= self.interval else { return .none }
        let id = self.nextPingID
        self.nextPingID += 1
        self.outstanding = (id, now)
        return .sendPing(id)
    }
}
