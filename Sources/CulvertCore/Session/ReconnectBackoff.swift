public import NIOCore

/// When to try reconnecting after a transport connection was lost: jittered exponential backoff.
///
/// The n-th attempt in a row waits a random time between half and all of `initial · 2ⁿ⁻¹`, capped at `maximum`
/// (100 ms doubling to 30 s by default), so that many clients cut at once do not come back in lockstep. The count
/// starts over only after a connection has stayed up for `stableAfter`: a path that cuts every connection a moment
/// after it is made keeps backing off. Times and randomness are inputs; it has no clock of its own.
public struct ReconnectBackoff: Sendable {
    public let initial: TimeAmount
    public let maximum: TimeAmount
    public let stableAfter: TimeAmount
    private var failures = 0
    private var connectedAt: NIODeadline?
    private let random: @Sendable (ClosedRange<Double>) -> Double

    public init(
        initial: TimeAmount = .milliseconds(100),
        maximum: TimeAmount = .seconds(30),
        stableAfter: TimeAmount = .seconds(10),
        random: @escaping @Sendable (ClosedRange<Double>) -> Double = { Double.random(in: $0) }
    ) {
        self.initial = initial
        self.maximum = maximum
        self.stableAfter = stableAfter
        self.random = random
    }

    /// Attempts made since the count last started over.
    public var attempts: Int { self.failures }

    /// The connection was lost (or an attempt failed) at `now`: how long to wait before the next attempt.
    public mutating func nextDelay(now: NIODeadline) -> TimeAmount {
        if let connectedAt = self.connectedAt, now - connectedAt >= self.stableAfter {
            self.failures = 0
        }
        self.connectedAt = nil
        self.failures += 1
        let exponent = min(self.failures - 1, 30)
        let ceiling = min(Double(self.initial.nanoseconds) * pow2(exponent), Double(self.maximum.nanoseconds))
        return .nanoseconds(Int64(self.random((ceiling / 2)...ceiling)))
    }

    /// A connection was made at `now`.
    public mutating func connected(now: NIODeadline) {
        self.connectedAt = now
    }
}

private func pow2(_ exponent: Int) -> Double {
    Double(UInt64(1) << UInt64(min(exponent, 62)))
}
