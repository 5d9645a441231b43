import ArgumentParser
import Culvert
import NIOPosix
import Prometheus

/// `--metrics-listen HOST:PORT` (server and client): Prometheus metrics at `http://HOST:PORT/metrics`.
struct MetricsOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Serve Prometheus metrics at http://HOST:PORT/metrics (keep it on a private address).", valueName: "host:port"))
    var metricsListen: String?

    /// Starts the endpoint, if asked for; its metrics go in the session configuration. A scrape first runs
    /// `collect`. An address that cannot be bound ends the process with one line.
    func start(collect: @escaping @Sendable () async -> Void) async throws -> MetricsEndpoint? {
        guard let text = self.metricsListen else { return nil }
        guard let (host, portText) = splitHostPort(text), let port = Int(portText), (0...65535).contains(port) else {
            throw ValidationError("--metrics-listen '\(text)' must be HOST:PORT, e.g. 127.0.0.1:9090")
        }
        do {
            return try await MetricsEndpoint.start(
                host: host, port: port, registry: PrometheusCollectorRegistry(), collect: collect, group: MultiThreadedEventLoopGroup.singleton
            )
        } catch {
            fail("cannot serve metrics on \(text): \(describeBindError(error))")
        }
    }
}
