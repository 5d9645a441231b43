public import CulvertTransport
import NIOCore

/// The outcome of one transport's probe.
public struct ProbeResult: Sendable {
    /// How upstream bytes travel on a transport that works.
    public enum Upstream: String, Sendable {
        /// In one long-lived stream (a WebSocket, a CONNECT tunnel, a streaming POST).
        case stream
        /// In short requests: polling always; chunked when the path holds or cuts streaming request bodies.
        case shortRequests = "short_posts"
    }

    public var transport: TransportKind
    public var works: Bool
    public var failure: ProbeFailure?
    /// Why, in the words of the error (empty when it works).
    public var detail: String
    /// Round-trip time through the transport: half the session handshake (two round trips).
    public var roundTripMilliseconds: Double?
    /// Time the probe took.
    public var elapsedMilliseconds: Double
    /// How upstream travels, when the transport works.
    public var upstream: Upstream?
    /// The shape of the bodies of a chunked or polling transport that works (text when the path refused binary).
    public var bodyShape: HTTPBodyShape?
    /// For a failure: whether trying again cannot help (see ``SessionError/retryCannotFix``).
    public var retryCannotFix = false

    public init(
        transport: TransportKind,
        works: Bool,
        failure: ProbeFailure?,
        detail: String,
        roundTripMilliseconds: Double?,
        elapsedMilliseconds: Double,
        upstream: Upstream? = nil,
        bodyShape: HTTPBodyShape? = nil
    ) {
        self.transport = transport
        self.works = works
        self.failure = failure
        self.detail = detail
        self.roundTripMilliseconds = roundTripMilliseconds
        self.elapsedMilliseconds = elapsedMilliseconds
        self.upstream = upstream
        self.bodyShape = bodyShape
    }

    /// A failed probe of `transport` that started at `start`.
    init(failed transport: TransportKind, _ failure: ProbeFailure, _ detail: String, since start: NIODeadline, retryCannotFix: Bool = false) {
        self.init(
            transport: transport, works: false, failure: failure, detail: detail, roundTripMilliseconds: nil,
            elapsedMilliseconds: Double((NIODeadline.now() - start).nanoseconds) / 1e6
        )
        self.retryCannotFix = retryCannotFix || failure == .authentication
    }
}
