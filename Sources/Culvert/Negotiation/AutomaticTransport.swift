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
        /// No transport gets through; `reasons` says why for each.
        case nothingGetsThrough(server: ServerEndpoint, reasons: [String])

        public var description: String {
            switch self {
            case .tokenRefused(let detail):
                "\(detail) (check --token on both sides)"
            case .nothingGetsThrough(let server, let reasons):
                "no transport gets through to \(server): \(reasons.joined(separator: "; ")); `culvert probe` explains more"
            }
        }
    }

    /// Connects as `configuration` says, choosing its transport (``TunnelClient/Configuration/transport`` is ignored).
    /// Throws ``Failure`` when the token is refused or no transport works, a ``ForwardingError`` when a listener
    /// cannot be opened.
    public static func connect(
        configuration: TunnelClient.Configuration,
        cache: NegotiationCache?,
        group: any EventLoopGroup,
        logger: Logger
    ) async throws -> TunnelClient {
        let server = configuration.server
        let proxy = configuration.transportOptions.proxy
        func connect(_ kind: TransportKind) async throws -> TunnelClient {
            var attempt = configuration
            attempt.transport = kind
            return try await TunnelClient.connect(configuration: attempt, group: group, logger: logger)
        }
        var client: TunnelClient?
        if let remembered = cache?.winner(server: server, proxy: proxy) {
            do {
                client = try await connect(remembered)
                logger.info("transport auto: using \(remembered), which won last time; probing the others meanwhile")
            } catch let error as SessionError where error.isAuthenticationFailure {
                throw Failure.tokenRefused("\(error)")
            } catch let error as ForwardingError {
                throw error
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
            server: server, options: configuration.transportOptions, session: configuration.session, group: group, logger: quiet
        ) {
            guard result.works else {
                if result.failure == .authentication {
                    await client?.shutdown(gracePeriod: .zero)
                    throw Failure.tokenRefused(result.detail)
                }
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
                    throw error
                } catch {
                    reasons.append("\(result.transport): \(error)")
                }
            }
        }
        guard let client else { throw Failure.nothingGetsThrough(server: server, reasons: reasons) }
        let chosen = client.currentTransport
        client.setFallbacks(working.sorted { TransportNegotiator.rank($0) < TransportNegotiator.rank($1) })
        cache?.remember(chosen, server: server, proxy: proxy)
        if !reasons.isEmpty { logger.info("transport auto: not usable here: \(reasons.joined(separator: "; "))") }
        logger.info("transport auto: settled on \(chosen)")
        return client
    }
}
