import NIOCore

/// Limits failed authentications per source address: after `limit` failures within `window`, that address's new
/// sessions are refused before any handshake work until the oldest failure leaves the window. Pure (time is passed
/// in) and bounded: at most `maximumAddresses` addresses are tracked; past that the least recently failing is dropped.
///
/// A client that knows the token is never slowed down by others: only the failing address is throttled.
public struct AuthenticationThrottle: Sendable {
    public let limit: Int
    public let window: TimeAmount
    public let maximumAddresses: Int
    private var failures: [String: [NIODeadline]] = [:]

    public init(limit: Int = 10, window: TimeAmount = .seconds(60), maximumAddresses: Int = 10_000) {
        self.limit = max(1, limit)
        self.window = window
        self.maximumAddresses = max(1, maximumAddresses)
    }

    /// Addresses tracked now (for tests and statistics).
    public var trackedAddresses: Int { self.failures.count }

    /// When `address` may try again: nil when it may now.
    public mutating func retryAfter(_ address: String, now: NIODeadline) -> TimeAmount? {
        guard var times = self.failures[address] else { return nil }
        times.removeAll { $0 + self.window <= now }
        if times.isEmpty {
            self.failures.removeValue(forKey: address)
            return nil
        }
        self.failures[address] = times
        guard times.count >= self.limit else { return nil }
        return times[times.count - self.limit] + self.window - now
    }

    /// `address` failed to authenticate at `now`.
    public mutating func recordFailure(_ address: String, now: NIODeadline) {
        var times = self.failures[address] ?? []
        times.removeAll { $0 + self.window <= now }
        times.append(now)
        // Only the last `limit` failures matter.
        if times.count > self.limit { times.removeFirst(times.count - self.limit) }
        self.failures[address] = times
        if self.failures.count > self.maximumAddresses {
            // Drop the address whose latest failure is oldest.
            if let stalest = self.failures.min(by: { ($0.value.last ?? now) < ($1.value.last ?? now) })?.key {
                self.failures.removeValue(forKey: stalest)
            }
        }
    }
}
