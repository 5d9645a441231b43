import ArgumentParser
import Culvert
import CulvertTransport
import Logging
import NIOCore
import NIOPosix

/// `culvert server`: accepts tunnels and connects their streams to allowed targets.
struct ServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "server",
        abstract: "Accept tunnels and connect their streams to allowed targets."
    )

    @Option(help: "Address to listen on, HOST:PORT (e.g. 0.0.0.0:8080).")
    var listen: String

    @OptionGroup var tokenOptions: TokenOptions

    @Flag(help: "Run without authentication: anyone who reaches the port can use the tunnel.")
    var noAuth = false

    @Option(help: "Allow streams to HOST:PORT (host may be *, port may be * or A-B). Repeatable.")
    var allow: [String] = []

    @Flag(help: "Allow streams to any target (dangerous on a server others can reach).")
    var allowAny = false

    @Option(help: ArgumentHelp(
        "Let clients open reverse listeners (-R) on [BIND:]PORT or [BIND:]PORT-PORT of this server; BIND defaults to 127.0.0.1, * for any address. Repeatable. Default: none.",
        valueName: "[BIND:]PORT[-PORT]"))
    var allowReverse: [String] = []

    @Option(help: ArgumentHelp("Seconds a UDP stream (to a UDP target, or a flow of a reverse UDP listener) lasts without a datagram either way.", valueName: "seconds"))
    var udpTimeout: Double = 30

    @Option(help: "Path prefix of the tunnel endpoints.")
    var path: String = "/culvert"

    @Option(help: "Seconds to let open streams finish on shutdown.")
    var shutdownGrace: Double = 5

    @Flag(help: "Refuse clients' requests for compression.")
    var noCompress = false

    @Option(help: "Seconds a session whose connection dropped waits for its client to resume it before its streams are closed.")
    var resumeGrace: Double = 60

    @OptionGroup(title: "TLS") var tls: ServerTLSOptions

    @Option(help: "Sessions at once (handshaking, running or waiting to be resumed); past it new ones are refused.")
    var maxSessions: Int = 1024

    @Option(help: "Failed authentications an address may have per minute before its new sessions are refused unheard.")
    var authFailuresPerMinute: Int = 10

    @Option(help: "Seconds a new connection has to complete the session handshake.")
    var handshakeTimeout: Double = 10

    @OptionGroup var tuning: TuningOptions

    @OptionGroup(title: "Chunked and polling transports") var http: HTTPServerTransportOptions

    @OptionGroup var loggingOptions: LoggingOptions

    func run() async throws {
        let signals = SignalWaiter.install()
        HeapTuning.apply()
        let logger = try self.loggingOptions.makeLogger(label: "culvert.server")
        guard let (host, portText) = splitHostPort(self.listen), let port = Int(portText), (0...65535).contains(port) else {
            throw ValidationError("--listen '\(self.listen)' must be HOST:PORT, e.g. 127.0.0.1:8080")
        }
        let token = try self.tokenOptions.resolve()
        if token == nil && !self.noAuth {
            fail("the server needs a token: pass --token, --token-file or set CULVERT_TOKEN (or --no-auth to accept anyone)",
                 exitCode: 2)
        }
        var entries: [Allowlist.Entry] = []
        for text in self.allow {
            do { entries.append(try Allowlist.Entry(parsing: text)) } catch { throw ValidationError(error.description) }
        }
        if entries.isEmpty && !self.allowAny {
            logger.warning("no --allow entries and no --allow-any: every stream will be refused")
        }
        if self.allowAny { logger.warning("--allow-any: clients may reach any host and port this server can reach") }
        let prefix = normalizedPathPrefix(self.path)
        guard self.resumeGrace >= 0 else { throw ValidationError("--resume-grace must be 0 or more seconds") }
        var session = self.tuning.sessionConfiguration(
            token: token, authenticationRequired: !self.noAuth, compression: !self.noCompress
        )
        session.detachedGracePeriod = .fromSeconds(self.resumeGrace)
        guard self.handshakeTimeout > 0 else { throw ValidationError("--handshake-timeout must be more than 0 seconds") }
        session.handshakeTimeout = .fromSeconds(self.handshakeTimeout)
        guard self.maxSessions >= 1 else { throw ValidationError("--max-sessions must be at least 1") }
        guard self.authFailuresPerMinute >= 1 else { throw ValidationError("--auth-failures-per-minute must be at least 1") }
        var configuration = TunnelServer.Configuration(
            listenHost: host,
            listenPort: port,
            pathPrefix: prefix,
            session: session,
            allowlist: Allowlist(entries: entries, allowsAny: self.allowAny),
            http: try self.http.settings(),
            tls: try self.tls.resolve(listenHost: host, logger: logger)
        )
        var reverseEntries: [ReverseAllowlist.Entry] = []
        for text in self.allowReverse {
            do { reverseEntries.append(try ReverseAllowlist.Entry(parsing: text)) } catch { throw ValidationError(error.description) }
        }
        configuration.reverseAllowlist = ReverseAllowlist(entries: reverseEntries)
        guard self.udpTimeout > 0 else { throw ValidationError("--udp-timeout must be more than 0 seconds") }
        configuration.udpTimeout = TimeAmount.fromSeconds(self.udpTimeout)
        configuration.maximumSessions = self.maxSessions
        configuration.authenticationFailuresPerMinute = self.authFailuresPerMinute
        let server: TunnelServer
        do {
            server = try await TunnelServer.start(configuration: configuration, group: MultiThreadedEventLoopGroup.singleton,
                                                  logger: logger)
        } catch {
            fail("\(error)")
        }
        logger.info("culvert server listening on \(server.localAddress.map(\.displayText) ?? self.listen)\(configuration.tls == nil ? "" : " (HTTPS)"), path \(prefix)")
        let signal = await SignalWaiter.wait(signals)
        logger.info("\(SignalWaiter.name(of: signal)): shutting down (open streams get \(TimeAmount.fromSeconds(self.shutdownGrace).roundedText) to finish; again to exit at once)")
        await server.shutdown(gracePeriod: .milliseconds(Int64(self.shutdownGrace * 1000)))
    }
}

/// `host:port` with an optional bracketed IPv6 host.
func splitHostPort(_ text: String) -> (String, String)? {
    if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
        let host = String(text[text.index(after: text.startIndex)..<close])
        let rest = text[text.index(after: close)...]
        guard rest.hasPrefix(":") else { return nil }
        return (host, String(rest.dropFirst()))
    }
    guard let colon = text.lastIndex(of: ":") else { return nil }
    let host = String(text[..<colon])
    return (host.isEmpty ? "0.0.0.0" : host, String(text[text.index(after: colon)...]))
}

func normalizedPathPrefix(_ path: String) -> String {
    var prefix = path.hasPrefix("/") ? path : "/" + path
    while prefix.hasSuffix("/") && prefix.count > 1 { prefix.removeLast() }
    return prefix == "/" ? "" : prefix
}
