import Culvert
import CulvertTransport

/// What the matrix found for one proxy configuration.
struct SetupResult: Sendable {
    /// A transport forced with `--transport`: it carried the 16 MiB each way intact, or failed.
    enum Forced: Sendable {
        /// `degraded`: the probe's failure for a transport that still carries data, but too slowly for `auto` to
        /// pick it (a response passed on in bursts).
        /// `textBodies`: the path's content rules refused binary bodies, so they went as text.
        case works(upstream: ProbeResult.Upstream, degraded: ProbeFailure? = nil, textBodies: Bool = false)
        case fails(ProbeFailure, detail: String, seconds: Double)

        var works: Bool {
            if case .works = self { return true }
            return false
        }
    }

    /// An idle tunnel held through the proxy past its idle timeout.
    struct Idle: Sendable {
        var transport: TransportKind
        var heldSeconds: Int
        var carriedDataAfter: Bool
        var resumptions: Int
    }

    var setup: ProxySetup
    var version: String
    var probes: [ProbeResult] = []
    var forced: [TransportKind: Forced] = [:]
    var autoChoice: TransportKind?
    var autoSeconds: Double?
    var idle: Idle?
    /// Expectations not met, each one line; an empty list is a pass.
    var problems: [String] = []
}
