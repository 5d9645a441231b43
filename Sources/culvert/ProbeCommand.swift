import ArgumentParser
import Culvert
import CulvertTransport
import Foundation
import Logging
import NIOPosix

/// `culvert probe`: which transports get through to a server, why the others do not, and which `auto` would use.
struct ProbeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "probe",
        abstract: "Try every transport to a server and explain which get through and why the others do not.",
        discussion: "Exit status: 0 when at least one transport works, 1 when none does, 2 for bad arguments."
    )

    @Argument(help: "The server's URL, e.g. http://tunnel.example.com:8080.")
    var serverURL: String

    @OptionGroup var proxyOptions: ProxyOptions

    @OptionGroup(title: "TLS") var tlsOptions: ClientTLSOptions

    @OptionGroup var tokenOptions: TokenOptions

    @OptionGroup var userOptions: UserOptions

    @Flag(help: "Probe a server started with --no-session-encryption (end-to-end session encryption off on both sides).")
    var noSessionEncryption = false

    @Option(help: "Chunked and polling bodies to try: auto (binary, then text, then small text bodies, as the path refuses them), binary or text.")
    var bodyShape: HTTPClientTransportOptions.BodyShapeChoice = .auto

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false

    @OptionGroup var loggingOptions: LoggingOptions

    func run() async throws {
        let logger = try self.loggingOptions.makeLogger(label: "culvert.probe")
        let server: ServerEndpoint
        do { server = try ServerEndpoint(url: self.serverURL) } catch { throw ValidationError(error.description) }
        var quiet = logger
        quiet.logLevel = .critical
        var options = TransportOptions(
            proxy: try self.proxyOptions.resolve(for: server, logger: logger),
            tls: try self.tlsOptions.resolve(for: server, logger: logger), logger: quiet
        )
        options.http.bodyShapes = self.bodyShape.shapes
        let results = await TransportNegotiator.probe(
            server: server,
            options: options,
            session: try {
                var session = SessionConfiguration(token: try self.tokenOptions.resolve())
                session.user = try self.userOptions.resolve()
                session.sealing = !self.noSessionEncryption
                return session
            }(),
            group: MultiThreadedEventLoopGroup.singleton,
            logger: quiet
        )
        let choice = TransportNegotiator.choice(results)
        if self.json {
            print(Self.json(results, choice: choice))
        } else {
            print(ProbeTable.text(results), terminator: "")
            print("auto would use: \(choice?.rawValue ?? "nothing (no transport gets through)")")
        }
        if choice == nil { throw ExitCode(1) }
    }

    /// `{"choice": …, "transports": [{"name", "works", "failure", "rtt_ms", "time_ms", "upstream", "body", "detail"}]}`;
    /// `upstream` is `"stream"`, `"short_posts"` or null (the transport does not work); `body` is the body shape a
    /// chunked or polling transport that works settled on (`"binary"`, `"text"`), null otherwise.
    static func json(_ results: [ProbeResult], choice: TransportKind?) -> String {
        struct Entry: Encodable {
            var name: String
            var works: Bool
            var failure: String?
            var rttMilliseconds: Double?
            var timeMilliseconds: Double
            var upstream: String?
            var body: String?
            var detail: String

            enum CodingKeys: String, CodingKey {
                case name, works, failure, detail, upstream, body
                case rttMilliseconds = "rtt_ms"
                case timeMilliseconds = "time_ms"
            }

            /// Absent values are `null`, not left out: scripts can rely on every key.
            func encode(to encoder: any Encoder) throws {
                var container = encoder.container(keyedBy: CodingKeys.self)
                try container.encode(self.name, forKey: .name)
                try container.encode(self.works, forKey: .works)
                try container.encode(self.failure, forKey: .failure)
                try container.encode(self.rttMilliseconds, forKey: .rttMilliseconds)
                try container.encode(self.timeMilliseconds, forKey: .timeMilliseconds)
                try container.encode(self.upstream, forKey: .upstream)
                try container.encode(self.body, forKey: .body)
                try container.encode(self.detail, forKey: .detail)
            }
        }
        struct Report: Encodable {
            var choice: String?
            var transports: [Entry]

            func encode(to encoder: any Encoder) throws {
                var container = encoder.container(keyedBy: CodingKeys.self)
                try container.encode(self.choice, forKey: .choice)  // null when nothing works, not left out
                try container.encode(self.transports, forKey: .transports)
            }

            enum CodingKeys: String, CodingKey { case choice, transports }
        }
        let report = Report(
            choice: choice?.rawValue,
            transports: results.map {
                Entry(name: $0.transport.rawValue, works: $0.works, failure: $0.failure?.rawValue,
                      rttMilliseconds: $0.roundTripMilliseconds.map { ($0 * 10).rounded() / 10 },
                      timeMilliseconds: ($0.elapsedMilliseconds * 10).rounded() / 10, upstream: $0.upstream?.rawValue,
                      body: $0.bodyShape?.rawValue, detail: $0.detail)
            }
        )
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: (try? encoder.encode(report)) ?? Data("{}".utf8), as: UTF8.self)
    }
}
