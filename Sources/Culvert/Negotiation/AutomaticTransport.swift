public import CulvertTransport
public import Logging
public import NIOCore

/// `--transport auto` as a library call: connects a ``TunnelClient`` over the best transport that really gets through.
///
/// Starts on the remembered winner for this (server, proxy) if it still works, else on the first transport whose
/// probe passes; moves the live session to a cheaper one when its probe passes later (without losing a byte of any
/// open stream); remembers the final choice; and keeps the other working transports as fallbacks for a transport that
/// keeps failing. It returns once every probe has finished, with the client on the final transport.
public enum AutomaticTransport {
    /// Why no client could be connected.
    public enum Failure: Error, CustomStringConvertible {
        /// The server refused the token (over whichever transport reached it first).
        case tokenRefused(String)
        /// No transport gets through; `failures` says why for each.
        case nothingGetsThrough(server: ServerEndpoint, failures: [ProbeResult])

        public var description: String {
            switch self {
            case .tokenRefused(let detail):
                detail.contains("no token given") ? detail : "\(detail) (check --token on both sides)"
            case .nothingGetsThrough(let server, let failures):
                "no transport gets through to \(server): \(Self.reasons(failures)); `culvert probe` explains more"
            }
        }

        /// Why each transport failed, the cause said once when every transport failed for the same reason (a
        /// server that is down fails all four alike).
        static func reasons(_ failures: [ProbeResult]) -> String {
            let details = Set(failures.map(\.detail))
            if details.count == 1, let detail = details.first, failures.count > 1 {
                return "\(detail) (all \(failures.count) transports)"
            }
            return failures.map { "\($0.transport): \($0.failure?.phrase ?? "failed") (\($0.detail))" }.joined(separator: "; ")
        }

        /// Whether trying again cannot help: the token was refused, or every transport failed in a way only a
        /// change of settings fixes (TLS refused, no such path, the proxy refusing credentials).
        public var retryCannotFix: Bool {
            switch self {
            case .tokenRefused: true
            case .nothingGetsThrough(_, let failures): !failures.isEmpty && failures.allSatisfy { $0.retryCannotFix }
            }
        }
    }

    /// Connects as `configuration` says, choosing its transport (``TunnelClient/Configuration/transport`` is ignored).
    /// The local listeners open first; while no transport gets through it negotiates again after the reconnect
    /// backoff, for up to ``TunnelClient/Configuration/firstConnectionRetryTime``. Throws ``Failure`` when the token is
    /// refused or no transport works within that time, a ``ForwardingError`` when a listener cannot be opened.
    public static func connect(
        configuration: TunnelClient.Configuration,
        cache: NegotiationCache?,
        group: any EventLoopGroup,
        logger: Logger
    ) async throws -> TunnelClient {
        let client = try await TunnelClient.open(configuration: configuration, group: group, logger: logger)
        try await client.connectFirstSession {
            try await Self.negotiate(client, configuration: configuration, cache: cache, group: group, logger: logger)
        }
        return client
    }

    /// One negotiation: starts `client`'s first session on the remembered winner or the first transport whose probe
    /// passes, and moves it to a cheaper one whose probe passes later.
    private static func negotiate(
        _ client: TunnelClient,
        configuration: TunnelClient.Configuration,
        cache: NegotiationCache?,
        group: any EventLoopGroup,
        logger: Logger
    ) async throws {
        let server = configuration.server
        let proxy = configuration.transportOptions.proxy
        var started = false
        if let remembered = cache?.winner(server: server, proxy: proxy) {
            do {
                try await client.startSession(over: remembered)
                started = true
                logger.info("transport auto: using \(remembered), which won last time; probing the others meanwhile")
            } catch let error as SessionError where error.isAuthenticationFailure {
                throw Failure.tokenRefused("\(error)")
            } catch {
                logger.info("transport auto: \(remembered), which won last time, failed now (\(error)); probing again")
                cache?.remember(nil, server: server, proxy: proxy)
            }
        }
        var quiet = logger
        quiet.logLevel = .critical
        var working: [TransportKind] = []
        var failures: [ProbeResult] = []
        for await result in TransportNegotiator.results(
            server: server, options: configuration.transportOptions, session: configuration.session, group: group, logger: quiet
        ) {
            configuration.session.metrics?.negotiated(transport: result.transport, failure: result.works ? nil : result.failure?.rawValue ?? "other")
            guard result.works else {
                if result.failure == .authentication && !started { throw Failure.tokenRefused(result.detail) }
                failures.append(result)
                continue
            }
            working.append(result.transport)
            if started {
                if TransportNegotiator.rank(result.transport) < TransportNegotiator.rank(client.currentTransport) {
                    logger.info("transport auto: \(result.transport) works too and costs less; moving the session to it")
                    client.switchTransport(to: result.transport)
                }
            } else {
                do {
                    try await client.startSession(over: result.transport)
                    started = true
                    logger.info("transport auto: started on \(result.transport), the first that works; still probing the others")
                } catch {
                    var failed = result
                    failed.works = false
                    failed.failure = ProbeFailure.classify(error, kind: result.transport, transportEstablished: false)
                    failed.detail = "\(error)"
                    failed.retryCannotFix = TunnelClient.retryCannotFix(error)
                    failures.append(failed)
                }
            }
        }
        guard started else { throw Failure.nothingGetsThrough(server: server, failures: failures) }
        let chosen = client.currentTransport
        client.setFallbacks(working.sorted { TransportNegotiator.rank($0) < TransportNegotiator.rank($1) })
        cache?.remember(chosen, server: server, proxy: proxy)
        if !failures.isEmpty { logger.info("transport auto: not usable here: \(Failure.reasons(failures))") }
        logger.info("transport auto: settled on \(chosen)")
    }
}
