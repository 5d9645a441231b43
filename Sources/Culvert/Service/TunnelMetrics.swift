public import CoreMetrics
import CulvertCore
import CulvertTransport
import NIOConcurrencyHelpers

/// What sessions, streams, servers and the negotiator report to swift-metrics, named in Prometheus's conventions
/// (`culvert_…`, `_total` for counters, base units). With no metrics backend bootstrapped every call is a no-op.
///
/// The factory is a value, not the global one only, so that a test (or an embedder running two tunnels) can keep its
/// figures apart.
///
/// Each handle is made once per label set and kept (``HandleCache``): making one asks the factory, which looks it up
/// in its registry under a lock.
public struct TunnelMetrics: Sendable {
    public let factory: any MetricsFactory
    private let meters: HandleCache<Meter>
    private let counters: HandleCache<Counter>
    private let streamsOpenMeter: Meter
    private let resumeDuration: Timer
    private let authenticationFailures: Counter
    private let throttledConnections: Counter
    private let throttledAddresses: Counter
    private let sessionMemoryGauge: Gauge

    public init(factory: any MetricsFactory = MetricsSystem.factory) {
        self.factory = factory
        self.meters = HandleCache()
        self.counters = HandleCache()
        self.streamsOpenMeter = Meter(label: "culvert_streams_open", dimensions: [], factory: factory)
        self.resumeDuration = Timer(label: "culvert_resume_duration_seconds", dimensions: [], factory: factory)
        self.authenticationFailures = Counter(label: "culvert_auth_failures_total", dimensions: [], factory: factory)
        self.throttledConnections = Counter(label: "culvert_throttled_connections_total", dimensions: [], factory: factory)
        self.throttledAddresses = Counter(label: "culvert_throttled_addresses_total", dimensions: [], factory: factory)
        self.sessionMemoryGauge = Gauge(label: "culvert_session_memory_bytes", dimensions: [], factory: factory)
    }

    private func meter(_ label: String, _ dimensions: [(String, String)]) -> Meter {
        self.meters.handle(label, dimensions) { Meter(label: label, dimensions: dimensions, factory: self.factory) }
    }

    private func counter(_ label: String, _ dimensions: [(String, String)]) -> Counter {
        self.counters.handle(label, dimensions) { Counter(label: label, dimensions: dimensions, factory: self.factory) }
    }

    // MARK: Sessions

    /// A session was established over `transport` (as `user`, "" for the shared token), or moved off it (-1).
    func sessionsOpen(_ change: Int64, transport: TransportKind, user: String?) {
        let meter = self.meter("culvert_sessions_open", [("transport", "\(transport)"), ("user", user ?? "")])
        if change > 0 { meter.increment(by: Double(change)) } else { meter.decrement(by: Double(-change)) }
    }

    /// A session resumed over `transport`, `seconds` after its transport was lost (data flows again from now).
    func resumed(transport: TransportKind, afterNanoseconds nanoseconds: Int64) {
        self.counter("culvert_resumes_total", [("transport", "\(transport)")]).increment()
        self.resumeDuration.recordNanoseconds(max(0, nanoseconds))
    }

    /// Stream payload bytes that went over `transport` since the last report.
    func bytes(sent: Int, received: Int, transport: TransportKind) {
        if sent > 0 {
            self.counter("culvert_stream_bytes_total", [("transport", "\(transport)"), ("direction", "out")]).increment(by: sent)
        }
        if received > 0 {
            self.counter("culvert_stream_bytes_total", [("transport", "\(transport)"), ("direction", "in")]).increment(by: received)
        }
    }

    /// A GOAWAY went out, with its code.
    func goAwaySent(_ code: GoAwayCode) {
        self.counter("culvert_goaways_sent_total", [("reason", Self.label(code))]).increment()
    }

    // MARK: Streams

    func streamsOpen(_ change: Int64) {
        let meter = self.streamsOpenMeter
        if change > 0 { meter.increment(by: Double(change)) } else { meter.decrement(by: Double(-change)) }
    }

    /// A stream the peer opened was connected (`ok`), refused by the rules (`refused`), or its target failed.
    func streamOpened(outcome: StreamOutcome) {
        self.counter("culvert_streams_opened_total", [("outcome", outcome.rawValue)]).increment()
    }

    enum StreamOutcome: String {
        case ok
        case refused
        case targetFailed = "target_failed"
    }

    // MARK: Server

    func authenticationFailed() {
        self.authenticationFailures.increment()
    }

    /// A connection was refused unheard: its address failed too often.
    func throttledConnection() {
        self.throttledConnections.increment()
    }

    /// An address reached the failure limit and is refused for a while.
    func addressThrottled() {
        self.throttledAddresses.increment()
    }

    /// The receive memory the sessions have committed to their streams' windows, in bytes.
    func sessionMemory(bytes: Int) {
        self.sessionMemoryGauge.record(bytes)
    }

    // MARK: Client

    /// One transport's probe in a negotiation: it worked, or failed with `failure` (a `culvert probe` code).
    func negotiated(transport: TransportKind, failure: String?) {
        self.counter(
            "culvert_negotiation_probes_total",
            [("transport", "\(transport)"), ("outcome", failure == nil ? "works" : "failed"), ("failure", failure ?? "")]
        ).increment()
    }

    /// `normal_shutdown`, `authentication_failed`, …: a code's description as a label value.
    static func label(_ code: GoAwayCode) -> String {
        String(code.description.map { $0 == " " ? "_" : $0 })
    }
}

/// swift-metrics handles of one kind, made once per label and dimension values and kept.
private final class HandleCache<Handle: Sendable>: Sendable {
    private struct Key: Hashable {
        var label: String
        var values: [String]
    }

    private let handles = NIOLockedValueBox<[Key: Handle]>([:])

    func handle(_ label: String, _ dimensions: [(String, String)], make: () -> Handle) -> Handle {
        let key = Key(label: label, values: dimensions.flatMap { [$0.0, $0.1] })
        return self.handles.withLockedValue { handles in
            if let handle = handles[key] { return handle }
            let handle = make()
            handles[key] = handle
            return handle
        }
    }
}
