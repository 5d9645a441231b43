import NIOCore

/// Decides when to ping and when the transport is dead, from times passed in (no clock of its own).
///
/// The driver calls ``tick(now:)`` on a timer and ``receivedPong(_:now:)``/``receivedAnything(now:)`` as frames
/// arrive. A ping is sent after ``interval`` without any inbound traffic; the transport is declared dead when its
/// pong has not come within ``timeout``.
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
    private var outstanding: (id: UInt64, sentAt: NIODeadline)?
    private var nextPingID: UInt64 = 1
    /// The round-trip time measured by the last pong.
    public private(set) var lastRoundTrip: TimeAmount?

    public init(interval: TimeAmount, timeout: TimeAmount, now: NIODeadline) {
        self.interval = interval
        self.timeout = timeout
        self.lastInbound = now
    }

    public mutating func receivedAnything(now: NIODeadline) {
        self.lastInbound = now
    }

    public mutating func receivedPong(_ id: UInt64, now: NIODeadline) {
        self.lastInbound = now
        if let outstanding = self.outstanding, outstanding.id == id {
            self.lastRoundTrip = now - outstanding.sentAt
            self.outstanding = nil
        }
    }

    public mutating func tick(now: NIODeadline) -> Action {
        if let outstanding = self.outstanding {
            if now - outstanding.sentAt >= self.timeout {
                return .declareDead(silentFor: now - self.lastInbound)
            }
            return .none
        }
        guard now - self.lastInbound >= self.interval else { return .none }
        let id = self.nextPingID
        self.nextPingID += 1
        self.outstanding = (id, now)
        return .sendPing(id)
    }
}
