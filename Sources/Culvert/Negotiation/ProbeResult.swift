import CulvertTransport

/// The outcome of one transport's probe.
public struct ProbeResult: Sendable {
    public var transport: TransportKind
    public var works: Bool
    public var failure: ProbeFailure?
    /// Why, in the words of the error (empty when it works).
    public var detail: String
    /// Round-trip time through the transport: half the session handshake (two round trips).
    public var roundTripMilliseconds: Double?
    /// Time the probe took.
    public var elapsedMilliseconds: Double
}
