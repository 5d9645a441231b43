public import NIOCore

/// Limits authentication attempts per source address. An attempt counts from the moment it begins, not when its
/// proof has been checked: `limit` minus the failures within `window` is how many attempts an address may have under
/// way at once, so a thousand concurrent wrong proofs cost no more checks than ten sequential ones. Past the limit an
/// address's new attempts are refused unheard, with the time after which it may try again (the client waits that
/// long and retries: a refusal is a delay, never a verdict on the token).
///
/// Pure (time is passed in) and bounded: at most `maximumAddresses` addresses are tracked; past that the one whose
/// latest failure is oldest is dropped.
///
/// A client that knows the token is never slowed down by others: only the failing address is throttled.
public struct AuthenticationThrottle: Sendable {
    /// Changed by a reload: the next attempts are counted against the new limit.
    public var limit: Int {
        didSet { self.limit = max(1, self.limit) }
    }
    public let window: TimeAmount
    public let maximumAddresses: Int
    /// How soon an address whose attempts (not failures) fill the limit may try again.
    public static let busyRetryDelay = TimeAmount.seconds(1)

    private struct Record: Sendable {
        /// The last `limit` failures, oldest first.
        var failures: [NIODeadline] = []
        /// Attempts begun and not finished.
        var attemptsUnderWay = 0
    }

    private var records: [String: Record] = [:]

    public init(limit: Int = 10, window: TimeAmount = .seconds(60), maximumAddresses: Int = 10_000) {
        self.limit = max(1, limit)
        self.window = window
        self.maximumAddresses = max(1, maximumAddresses)
    }

    /// Addresses tracked now (for tests and statistics).
    public var trackedAddresses: Int { self.records.count }

    /// Attempts from `address` begun and not yet finished.
    public func attemptsUnderWay(_ address: String) -> Int { self.records[address]?.attemptsUnderWay ?? 0 }

    /// An attempt from `address` wants to begin at `now`: nil when it may (it then counts against the limit until
    /// ``finishAttempt(_:failed:now:)``), otherwise how long until the address may try again.
    public mutating func beginAttempt(_ address: String, now: NIODeadline) -> TimeAmount? {
        if let wait = self.retryAfter(address, now: now) { return wait }
        var record = self.records[address] ?? Record()
        guard record.failures.count + record.attemptsUnderWay < self.limit else { return Self.busyRetryDelay }
        record.attemptsUnderWay += 1
        self.records[address] = record
        self.evictIfNeeded(now: now)
        return nil
    }

    /// An attempt that ``beginAttempt(_:now:)`` let through has ended: `failed` when its proof did not verify.
    public mutating func finishAttempt(_ address: String, failed: Bool, now: NIODeadline) {
        if var record = self.records[address] {
            record.attemptsUnderWay = max(0, record.attemptsUnderWay - 1)
            self.records[address] = record
        }
        if failed {
            self.recordFailure(address, now: now)
        } else {
            self.forgetIfEmpty(address)
        }
    }

    /// When `address` may try again because of its failures alone: nil when it may now.
    public mutating func retryAfter(_ address: String, now: NIODeadline) -> TimeAmount? {
        guard var record = self.records[address] else { return nil }
        record.failures.removeAll { $0 + self.window <= now }
        self.records[address] = record
        guard record.failures.count >= self.limit else {
            self.forgetIfEmpty(address)
            return nil
        }
        return record.failures[record.failures.count - self.limit] + self.window - now
    }

    /// `address` failed to authenticate at `now`.
    public mutating func recordFailure(_ address: String, now: NIODeadline) {
        var record = self.records[address] ?? Record()
        record.failures.removeAll { $0 + self.window <= now }
        record.failures.append(now)
        // Only the last `limit` failures matter.
        if record.failures.count > self.limit { record.failures.removeFirst(record.failures.count - self.limit) }
        self.records[address] = record
        self.evictIfNeeded(now: now)
    }

    private mutating func forgetIfEmpty(_ address: String) {
        if let record = self.records[address], record.failures.isEmpty, record.attemptsUnderWay == 0 {
            self.records.removeValue(forKey: address)
        }
    }

    private mutating func evictIfNeeded(now: NIODeadline) {
        guard self.records.count > self.maximumAddresses else { return }
        // Drop the address whose latest failure is oldest (one with attempts under way and no failure first).
        if let stalest = self.records.min(by: { ($0.value.failures.last ?? .distantPast) < ($1.value.failures.last ?? .distantPast) })?.key {
            self.records.removeValue(forKey: stalest)
        }
    }
}
