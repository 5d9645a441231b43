import ArgumentParser
import NIOConcurrencyHelpers
import CulvertCore
import Foundation
import Culvert
import CulvertTransport
import Logging
import NIOCore
import NIOPosix

/// The `--transport` values: one transport, or `auto`.
enum TransportChoice: String, ExpressibleByArgument, CaseIterable {
    case auto, websocket, connect, chunked, polling

    /// The transport this choice names; `auto` means websocket here (where auto applies, ``AutomaticTransport``
    /// chooses instead).
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

    @OptionGroup(title: "Forwards") var forwarding: ForwardingOptions

    @OptionGroup var tokenOptions: TokenOptions

    @OptionGroup var userOptions: UserOptions

    @Option(help: ArgumentHelp(TransportChoice.helpText))
    var transport: TransportChoice = .auto

    @OptionGroup var proxyOptions: ProxyOptions

    @OptionGroup(title: "TLS") var tlsOptions: ClientTLSOptions

    @Option(help: "Extra request header NAME:VALUE on every tunnel request. Repeatable.")
    var header: [String] = []

    @Option(help: "Seconds allowed to connect and complete the handshake.")
    var connectTimeout: Double = 10

    @Option(help: ArgumentHelp(
        "Seconds to keep trying while the server or the proxy cannot be reached, at start-up and after a drop (0: exit at the first failure; default: for ever).",
        valueName: "seconds"))
    var maxRetryTime: Double?

    @Option(help: "Seconds to let open streams finish on shutdown.")
    var shutdownGrace: Double = 5

    @Flag(help: "No live status line (transport, RTT, streams, bytes/s each way) at the bottom of the terminal; it is shown only when standard error is a terminal and logs are text.")
    var noStatus = false

    @Flag(help: "Ask for per-stream zlib compression (for slow links; off by default).")
    var compress = false

    @OptionGroup var tuning: TuningOptions

    @OptionGroup(title: "Chunked and polling transports") var http: HTTPClientTransportOptions

    @OptionGroup var loggingOptions: LoggingOptions

    @OptionGroup(title: "Metrics") var metricsOptions: MetricsOptions

    func validate() throws {
        try self.forwarding.validate()
        if let maxRetryTime = self.maxRetryTime, !(maxRetryTime >= 0) {
            throw ValidationError("--max-retry-time must be 0 or more seconds")
        }
    }

    func run() async throws {
        let signals = SignalWaiter.install()
        HeapTuning.apply()
        // Under ssh's ProxyCommand every info line would land on the user's terminal at each login: --stdio says
        // only what went wrong unless asked for more.
        let logger = try self.loggingOptions.makeLogger(label: "culvert.client", defaultLevel: self.forwarding.stdio == nil ? .info : .warning)
        let server: ServerEndpoint
        do { server = try ServerEndpoint(url: self.serverURL) } catch { throw ValidationError(error.description) }
        let forwards = try self.forwarding.parsedForwards()
        let listeners = try self.forwarding.parsedListeners()
        let standardIOTarget = try self.forwarding.parsedStandardIOTarget()
        let reverseForwards = try self.forwarding.parsedReverseForwards()
        if forwards.isEmpty && listeners.isEmpty && standardIOTarget == nil && reverseForwards.isEmpty {
            logger.warning("no -L, -R, -D, -H or --stdio given: the tunnel will carry nothing")
        }
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
            tls: try self.tlsOptions.resolve(for: server, logger: logger),
            logger: logger
        )
        var sessionConfiguration = self.tuning.sessionConfiguration(token: try self.tokenOptions.resolve(), compression: self.compress)
        sessionConfiguration.user = try self.userOptions.resolve()
        var configuration = TunnelClient.Configuration(
            server: server, transport: self.transport.resolvedKind(), transportOptions: transportOptions,
            session: sessionConfiguration, forwards: forwards
        )
        configuration.listeners = listeners
        configuration.standardIO = standardIOTarget
        configuration.reverseForwards = reverseForwards
        configuration.udpTimeout = TimeAmount.fromSeconds(self.forwarding.udpTimeout)
        configuration.firstConnectionRetryTime = self.maxRetryTime.map(TimeAmount.fromSeconds)
        configuration.reconnectRetryTime = self.maxRetryTime.map(TimeAmount.fromSeconds)
        let scraped = NIOLockedValueBox<TunnelClient?>(nil)
        let endpoint = try await self.metricsOptions.start { await scraped.withLockedValue { $0 }?.collectMetrics() }
        configuration.session.metrics = endpoint?.metrics
        if let endpoint, let address = endpoint.channel.localAddress {
            logger.info("metrics at http://\(address.displayText)/metrics")
        }
        let group = MultiThreadedEventLoopGroup.singleton
        let firstSignal = SignalWaiter.firstSignal(signals, eventLoop: group.any())
        // The first session may take long to come (the server is down, the path refuses every transport): a signal
        // meanwhile stops the client at once, with the local connections that wait for it.
        let connected = group.any().makePromise(of: TunnelClient.self)
        let automatic = self.transport == .auto
        connected.completeWithTask { [configuration] in
            if automatic {
                return try await AutomaticTransport.connect(
                    configuration: configuration, cache: NegotiationCache.userCache(), group: group, logger: logger
                )
            }
            return try await TunnelClient.connect(configuration: configuration, group: group, logger: logger)
        }
        let client: TunnelClient
        switch await SignalWaiter.waitForSignal(firstSignal, orFirstOf: [connected.futureResult.map(Optional.some)], ifFailed: nil) {
        case .signal(let signal):
            logger.info("\(SignalWaiter.name(of: signal)): stopping before the tunnel to the server was up")
            Foundation.exit(0)
        case .ended(let started?):
            client = started
            scraped.withLockedValue { $0 = started }
        case .ended(nil):
            do {
                client = try await connected.futureResult.get()
                scraped.withLockedValue { $0 = client }
            } catch let error as SessionError {
                fail(error.userMessage)
            } catch {
                fail("\(error)")
            }
        }
        // On a terminal, a live status line under the log lines (not with --stdio: its terminal is ssh's).
        let statusLine =
            !self.noStatus && standardIOTarget == nil && isatty(2) != 0 && (try? self.loggingOptions.logsAsJSON()) == false
            ? Task { await Self.showLiveStatus(of: client) } : nil
        if statusLine != nil { TerminalStatusLine.shared.activate() }
        defer {
            statusLine?.cancel()
            TerminalStatusLine.shared.clear()
        }
        if let standardIOTarget, let streamEnd = client.standardIOEnded {
            await self.runStandardIO(to: standardIOTarget, streamEnd: streamEnd, client: client, signal: firstSignal, logger: logger)
            return
        }
        switch await SignalWaiter.waitForSignal(firstSignal, orEndOf: client.ended) {
        case .signal(let signal):
            logger.info("\(SignalWaiter.name(of: signal)): shutting down (open streams get \(TimeAmount.fromSeconds(self.shutdownGrace).roundedText) to finish; again to exit at once)")
            await client.shutdown(gracePeriod: .milliseconds(Int64(self.shutdownGrace * 1000)))
        case .ended(let reason):
            // The client reconnects and resumes (or starts a new session) on its own; it only ends when the
            // server stops accepting its token.
            fail(reason.isAuthenticationFailure ? reason.userMessage : "tunnel ended: \(reason)")
        }
    }
}

extension ClientCommand {
    /// Redraws the live status line once a second until cancelled, measuring the round trip for the next one.
    static func showLiveStatus(of client: TunnelClient) async {
        var previous: (status: ClientLiveStatus, at: NIODeadline)?
        while !Task.isCancelled {
            let status = await client.liveStatus(measuringRoundTrip: true)
            let now = NIODeadline.now()
            let line = status.line(after: previous?.status, elapsed: previous.map { now - $0.at } ?? .seconds(1))
            TerminalStatusLine.shared.show("culvert: " + line)
            previous = (status, now)
            try? await Task.sleep(for: .seconds(1))
        }
    }

    /// How a `--stdio` run ends: its stream finished (or could not open), or the tunnel ended.
    private enum StandardIOEnd: Sendable {
        case stream(StreamOpenResult)
        case tunnel(SessionError)
    }

    /// Waits for the stdin/stdout stream to `target` and exits when it is over: 0 once it finished, 1 when it could
    /// not be opened or the tunnel ended under it.
    func runStandardIO(
        to target: TargetAddress, streamEnd: EventLoopFuture<StreamOpenResult>, client: TunnelClient, signal: EventLoopFuture<Int32>,
        logger: Logger
    ) async {
        let outcome = await SignalWaiter.waitForSignal(
            signal, orFirstOf: [streamEnd.map(StandardIOEnd.stream), client.ended.map(StandardIOEnd.tunnel)],
            ifFailed: .tunnel(.shutdown)
        )
        await client.shutdown(gracePeriod: .milliseconds(Int64(self.shutdownGrace * 1000)))
        switch outcome {
        case .signal(let signal):
            logger.info("\(SignalWaiter.name(of: signal)): stopping the --stdio stream to \(target)")
            Foundation.exit(128 + signal)
        case .ended(.stream(.opened)):
            logger.debug("the --stdio stream to \(target) ended")
        case .ended(.stream(.refused(_, let message))):
            fail("the server could not open \(target): \(message)")
        case .ended(.stream(.unavailable(let reason))):
            fail("the --stdio stream to \(target) was not carried: \(reason)")
        case .ended(.tunnel(let reason)):
            fail(reason.isAuthenticationFailure ? reason.userMessage : "tunnel ended: \(reason)")
        }
    }
}

extension String {
    func trimmingSpaces() -> String {
        String(self.drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}
