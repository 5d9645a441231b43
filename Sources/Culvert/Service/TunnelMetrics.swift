public import CoreMetrics
import CulvertCore
import CulvertTransport

/// What sessions, streams, servers and the negotiator report to swift-metrics, named in Prometheus's conventions
/// (`culvert_…`, `_total` for counters, base units). With no metrics backend bootstrapped every call is a no-op.
///
/// The factory is a value, not the global one only, so that a test (or an embedder running two tunnels) can keep its
/// figures apart.
public struct TunnelMetrics: Sendable {
    public let factory: any MetricsFactory

    public init(factory: any MetricsFactory = MetricsSystem.factory) {
        self.factory = factory
    }

    // MARK: Sessions

    /// A session was established over `transport` (as `user`, "" for the shared token), or moved off it (-1).
    func sessionsOpen(_ change: Int64, transport: TransportKind, user: String?) {
        let meter = Meter(label: "culvert_sessions_open", dimensions: [("transport", "\(transport)"), ("user", user ?? "")], factory: self.factory)
        if change > 0 { meter.increment(by: Double(change)) } else { meter.decrement(by: Double(-change)) }
    }

    /// A session resumed over `transport`, `seconds` after its transport was lost (data flows again from now).
    func resumed(transport: TransportKind, afterNanoseconds nanoseconds: Int64) {
        Counter(label: "culvert_resumes_total", dimensions: [("transport", "\(transport)")], factory: self.factory).increment()
        Timer(label: "culvert_resume_duration_seconds", dimensions: [], factory: self.factory).recordNanoseconds(max(0, nanoseconds))
    }

    /// Stream payload bytes that went over `transport` since the last report.
    func bytes(sent: Int, received: Int, transport: TransportKind) {
        if sent > 0 {
            Counter(label: "culvert_stream_bytes_total", dimensions: [("transport", "\(transport)"), ("direction", "out")], factory: self.factory)
                .increment(by: sent)
        }
        if received > 0 {
            Counter(label: "culvert_stream_bytes_total", dimensions: [("transport", "\(transport)"), ("direction", "in")], factory: self.factory)
                .increment(by: received)
        }
    }

    /// A GOAWAY went out, with its code.
    func goAwaySent(_ code: GoAwayCode) {
        Counter(label: "culvert_goaways_sent_total", dimensions: [("reason", Self.label(code))], factory: self.factory).increment()
    }

    // MARK: Streams

    func streamsOpen(_ change: Int64) {
        let meter = Meter(label: "culvert_streams_open", dimensions: [], factory: self.factory)
        if change > 0 { meter.increment(by: Double(change)) } else { meter.decrement(by: Double(-change)) }
    }

    /// A stream the peer opened was connected (`ok`), refused by the rules (`refused`), or its target failed.
    func streamOpened(outcome: StreamOutcome) {
        Counter(label: "culvert_streams_opened_total", dimensions: [("outcome", outcome.rawValue)], factory: self.factory).increment()
    }

    enum StreamOutcome: String {
        case ok
        case refused
        case targetFailed = "target_failed"
    }

    // MARK: Server

    func authenticationFailed() {
        Counter(label: "culvert_auth_failures_total", dimensions: [], factory: self.factory).increment()
    }

    /// A connection was refused unheard: its address failed too often.
    func throttledConnection() {
        Counter(label: "culvert_throttled_connections_total", dimensions: [], factory: self.factory).increment()
    }

    /// An address reached the failure limit and is refused for a while.
    func addressThrottled() {
        Counter(label: "culvert_throttled_addresses_total", dimensions: [], factory: self.factory).increment()
    }

    /// The receive memory the sessions have committed to their streams' windows, in bytes.
    func sessionMemory(bytes: Int) {
        Gauge(label: "culvert_session_memory_bytes", dimensions: [], factory: self.factory).record(bytes)
    }

    // MARK: Client

    /// One transport's probe in a negotiation: it worked, or failed with `failure` (a `culvert probe` code).
    func negotiated(transport: TransportKind, failure: String?) {
        Counter(
            label: "culvert_negotiation_probes_total",
            dimensions: [("transport", "\(transport)"), ("outcome", failure == nil ? "works" : "failed"), ("failure", failure ?? "")],
            factory: self.factory
        ).increment()
    }

    /// `normal_shutdown`, `authentication_failed`, …: a code's description as a label value.
    static func label(_ code: GoAwayCode) -> String {
        String(code.description.map { $0 == " " ? "_" : $0 })
    }
}
