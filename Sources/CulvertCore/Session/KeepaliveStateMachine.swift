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
    /// A ping sent to measure the round trip (``startMeasurement(now:)``), not to keep the transport alive.
    private var measurement: (id: UInt64, sentAt: NIODeadline)?
    /// Measurement pings take ids with the top bit set, so they never answer a keepalive ping.
    private var nextMeasurementID: UInt64 = 1 << 63
    /// The round-trip time the last answered measurement took (exact: its pong's arrival time is passed in).
    public private(set) var measuredRoundTrip: TimeAmount?

    /// The best round-trip figure there is: the last measurement's, or else the last keepalive's.
    public var roundTrip: TimeAmount? { self.measuredRoundTrip ?? self.lastRoundTrip }

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

    /// The id of a ping to send to measure the round trip (a live status asks about once a second), or nil while
    /// the last one is unanswered and younger than ``timeout``.
    public mutating func startMeasurement(now: NIODeadline) -> UInt64? {
        if let measurement = self.measurement, now - measurement.sentAt < self.timeout { return nil }
        let id = self.nextMeasurementID
        self.nextMeasurementID = self.nextMeasurementID == .max ? 1 << 63 : self.nextMeasurementID + 1
        self.measurement = (id, now)
        return id
    }

    /// Whether a pong with `id` answers a measurement (rather than a keepalive ping).
    public static func isMeasurement(_ id: UInt64) -> Bool { id >= 1 << 63 }

    /// The pong of a measurement arrived at `now`.
    public mutating func receivedMeasurementPong(_ id: UInt64, now: NIODeadline) {
        self.heardSinceTick = true
        guard let measurement = self.measurement, measurement.id == id else { return }
        self.measuredRoundTrip = now - measurement.sentAt
        self.measurement = nil
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
