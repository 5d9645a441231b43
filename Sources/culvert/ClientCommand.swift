import ArgumentParser
import Culvert
import CulvertTransport
import Logging
import NIOPosix

/// The `--transport` values: one transport, or `auto`.
enum TransportChoice: String, ExpressibleByArgument, CaseIterable {
    case auto, websocket, connect, chunked, polling

    /// The transport this choice names; `auto` means websocket here (the client probes instead: see
    /// ``ClientCommand``), for the demo and the benchmark.
    func resolvedKind() -> TransportKind {
        self == .auto ? TransportKind.websocket : TransportKind(rawValue: self.rawValue)!
    }

    static var helpText: String {
        "auto (the best that works; default) | "
            + TransportKind.allCases.map { "\($0.rawValue): \($0.summary)" }.joined(separator: " | ")
    }
}

/// `culvert client`: forwards local ports through the tunnel.
struct ClientCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "client",
        abstract: "Forward local ports through the tunnel to targets on the server's side."
    )

    @Argument(help: "The server's URL, e.g. http://tunnel.example.com:8080 (path defaults to /culvert).")
    var serverURL: String

    @Option(name: .customShort("L"), help: "Forward [BIND:]PORT:HOST:HOSTPORT (BIND defaults to 127.0.0.1). Repeatable.")
    var forwards: [String] = []

    @OptionGroup var tokenOptions: TokenOptions

    @Option(help: ArgumentHelp(TransportChoice.helpText))
    var transport: TransportChoice = .auto

    @OptionGroup var proxyOptions: ProxyOptions

    @Option(help: "Extra request header NAME:VALUE on every tunnel request. Repeatable.")
    var header: [String] = []

    @Option(help: "Seconds allowed to connect and complete the handshake.")
    var connectTimeout: Double = 10

    @Option(help: "Seconds to let open streams finish on shutdown.")
    var shutdownGrace: Double = 5

    @Flag(help: "Ask for per-stream zlib compression (for slow links; off by default).")
    var compress = false

    @OptionGroup var tuning: TuningOptions

    @OptionGroup(title: "Chunked and polling transports") var http: HTTPClientTransportOptions

    @OptionGroup var loggingOptions: LoggingOptions

    func run() async throws {
        let signals = SignalWaiter.install()
        let logger = try self.loggingOptions.makeLogger(label: "culvert.client")
        let server: ServerEndpoint
        do { server = try ServerEndpoint(url: self.serverURL) } catch { throw ValidationError(error.description) }
        var forwards: [ForwardSpec] = []
        for text in self.forwards {
            do { forwards.append(try ForwardSpec(parsing: text)) } catch { throw ValidationError(error.description) }
        }
        if forwards.isEmpty { logger.warning("no -L forwards given: the tunnel will carry nothing") }
        var headers: [(String, String)] = []
        for text in self.header {
            guard let colon = text.firstIndex(of: ":"), colon != text.startIndex else {
                throw ValidationError("--header '\(text)' must be NAME:VALUE")
            }
            headers.append((String(text[..<colon]), String(text[text.index(after: colon)...]).trimmingSpaces()))
        }
        let transportOptions = TransportOptions(
            extraHeaders: headers,
            connectTimeout: .milliseconds(Int64(self.connectTimeout * 1000)),
            proxy: try self.proxyOptions.resolve(for: server, logger: logger),
            http: try self.http.settings(),
            logger: logger
        )
        let sessionConfiguration = self.tuning.sessionConfiguration(token: try self.tokenOptions.resolve(), compression: self.compress)
        func connect(_ kind: TransportKind) async throws -> TunnelClient {
            try await TunnelClient.connect(
                configuration: TunnelClient.Configuration(
                    server: server, transport: kind, transportOptions: transportOptions,
                    session: sessionConfiguration, forwards: forwards
                ),
                group: MultiThreadedEventLoopGroup.singleton, logger: logger
            )
        }
        func failToConnect(_ error: any Error) -> Never {
            if let error = error as? SessionError, error.isAuthenticationFailure {
                fail("\(error) (check --token on both sides)")
            }
            fail("\(error)")
        }
        let client: TunnelClient
        if self.transport == .auto {
            client = await self.connectAutomatically(
                server: server, transportOptions: transportOptions, session: sessionConfiguration, logger: logger,
                connect: connect
            )
        } else {
            do { client = try await connect(self.transport.resolvedKind()) } catch { failToConnect(error) }
        }
        switch await SignalWaiter.waitForSignal(signals, orEndOf: client.ended) {
        case .signal(let signal):
            logger.info("signal \(signal): shutting down")
            await client.shutdown(gracePeriod: .milliseconds(Int64(self.shutdownGrace * 1000)))
        case .ended(let reason):
            // The client reconnects and resumes (or starts a new session) on its own; it only ends when the
            // server stops accepting its token.
            fail(reason.isAuthenticationFailure ? "\(reason) (check --token on both sides)" : "tunnel ended: \(reason)")
        }
    }
}

extension ClientCommand {
    /// `--transport auto`: starts on the remembered winner if it still works, else on the first transport whose
    /// probe passes; moves the live session to a better one when its probe passes later; remembers the final
    /// choice per (server, proxy) in the user's cache directory; and keeps the other working transports as
    /// fallbacks for a transport that keeps failing.
    func connectAutomatically(
        server: ServerEndpoint,
        transportOptions: TransportOptions,
        session: SessionConfiguration,
        logger: Logger,
        connect: (TransportKind) async throws -> TunnelClient
    ) async -> TunnelClient {
        let cache = NegotiationCache.userCache()
        let proxy = transportOptions.proxy
        var client: TunnelClient?
        if let remembered = cache?.winner(server: server, proxy: proxy) {
            do {
                client = try await connect(remembered)
                logger.info("transport auto: using \(remembered), which won last time; probing the others meanwhile")
            } catch let error as SessionError where error.isAuthenticationFailure {
                fail("\(error) (check --token on both sides)")
            } catch {
                logger.info("transport auto: \(remembered), which won last time, failed now (\(error)); probing again")
                cache?.remember(nil, server: server, proxy: proxy)
            }
        }
        var quiet = logger
        quiet.logLevel = .critical
        var working: [TransportKind] = []
        var reasons: [String] = []
        for await result in TransportNegotiator.results(
            server: server, options: transportOptions, session: session,
            group: MultiThreadedEventLoopGroup.singleton, logger: quiet
        ) {
            if result.failure == .authentication {
                fail("\(result.detail) (check --token on both sides)")
            }
            guard result.works else {
                reasons.append("\(result.transport): \(result.failure?.phrase ?? "failed") (\(result.detail))")
                continue
            }
            working.append(result.transport)
            if let current = client {
                if TransportNegotiator.rank(result.transport) < TransportNegotiator.rank(current.currentTransport) {
                    logger.info("transport auto: \(result.transport) works too and costs less; moving the session to it")
                    current.switchTransport(to: result.transport)
                }
            } else {
                do {
                    client = try await connect(result.transport)
                    logger.info("transport auto: started on \(result.transport), the first that works; still probing the others")
                } catch let error as ForwardingError {
                    fail("\(error)")
                } catch {
                    reasons.append("\(result.transport): \(error)")
                }
            }
        }
        guard let client else {
            fail("no transport gets through to \(server): \(reasons.joined(separator: "; ")); `culvert probe` explains more")
        }
        let chosen = client.currentTransport
        client.setFallbacks(working.sorted { TransportNegotiator.rank($0) < TransportNegotiator.rank($1) })
        cache?.remember(chosen, server: server, proxy: proxy)
        if !reasons.isEmpty { logger.info("transport auto: not usable here: \(reasons.joined(separator: "; "))") }
        logger.info("transport auto: settled on \(chosen)")
        return client
    }
}

extension String {
    func trimmingSpaces() -> String {
        String(self.drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}
