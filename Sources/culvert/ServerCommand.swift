import ArgumentParser
import NIOConcurrencyHelpers
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
    var listen: String?

    @Option(help: ArgumentHelp(
        "Read settings from this TOML file: each key is a long flag's name (listen = \"0.0.0.0:8080\", allow = [\"db:5432\"], no-compress = true); flags given on the command line win. SIGHUP re-reads it.",
        valueName: "file"))
    var config: String?

    @Option(help: ArgumentHelp(
        "Named users with their own tokens, allowlists and session limits (TOML, see docs/DEPLOYMENT.md). SIGHUP re-reads it.",
        valueName: "file"))
    var users: String?

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

    @Option(help: "Seconds SIGTERM/SIGINT lets open streams finish (the server stops accepting and sends GOAWAY at once, so clients open new sessions elsewhere), then exits 0.")
    var drainTimeout: Double?

    @Option(help: ArgumentHelp("The older name of --drain-timeout.", visibility: .hidden))
    var shutdownGrace: Double?

    /// --drain-timeout, or its older name, or 30 s.
    var drainSeconds: Double { self.drainTimeout ?? self.shutdownGrace ?? 30 }

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

    @OptionGroup(title: "Metrics") var metricsOptions: MetricsOptions

    func run() async throws {
        let signals = SignalWaiter.install()
        let hangups = SignalWaiter.installHangups()
        guard let configPath = self.config else {
            return try await self.serve(signals: signals, hangups: hangups, configFile: nil)
        }
        // The file's settings come first and the command line's after, leaving out the keys it gives: they win.
        let merged = Self.merging(configPath: configPath, commandLine: Self.commandLineArguments())
        try await merged.command.serve(signals: signals, hangups: hangups, configFile: merged.file)
    }

    /// This subcommand's arguments as given (after `server`).
    static func commandLineArguments() -> [String] {
        let arguments = CommandLine.arguments
        guard let index = arguments.firstIndex(of: "server") else { return Array(arguments.dropFirst()) }
        return Array(arguments[(index + 1)...])
    }

    /// The command that `commandLine` and the config file at `configPath` give together; a bad file (or a bad value
    /// in it) exits with the line and the key.
    static func merging(configPath: String, commandLine: [String]) -> (command: ServerCommand, file: FlagFile) {
        do {
            return try Self.merged(configPath: configPath, commandLine: commandLine)
        } catch {
            fail("--config: \(error)", exitCode: 2)
        }
    }

    /// The config file at `configPath` read now, and the command it and `commandLine` give together.
    static func merged(configPath: String, commandLine: [String]) throws -> (command: ServerCommand, file: FlagFile) {
        let file = try FlagFile.load(path: configPath, commandLine: commandLine)
        return (try Self.command(from: file, commandLine: commandLine), file)
    }

    /// The command that `file`'s settings and then `commandLine` give; a value the parser refuses is reported
    /// with the file's line and key it came from.
    static func command(from file: FlagFile, commandLine: [String]) throws(CLIError) -> ServerCommand {
        do {
            return try ServerCommand.parse(file.arguments + commandLine)
        } catch {
            let message = ServerCommand.message(for: error)
            guard let setting = file.place(ofArgumentError: message) else { throw CLIError("\(file.path): \(message)") }
            throw CLIError("\(file.path)\(setting.line.map { " line \($0)" } ?? ""), key \(setting.key): \(message)")
        }
    }

    /// The allowlists and users these settings give (the users file read now).
    func accessRules() throws -> AccessRules {
        guard self.maxSessions >= 1 else { throw ValidationError("--max-sessions must be at least 1") }
        guard self.authFailuresPerMinute >= 1 else { throw ValidationError("--auth-failures-per-minute must be at least 1") }
        var entries: [Allowlist.Entry] = []
        for text in self.allow {
            do { entries.append(try Allowlist.Entry(parsing: text)) } catch { throw ValidationError(error.description) }
        }
        var reverseEntries: [ReverseAllowlist.Entry] = []
        for text in self.allowReverse {
            do { reverseEntries.append(try ReverseAllowlist.Entry(parsing: text)) } catch { throw ValidationError(error.description) }
        }
        var users: [String: UserAccount]?
        if let path = self.users {
            do { users = try UsersFile.load(path: path) } catch { throw CLIError("--users: \(error)", exitCode: 2) }
        }
        return AccessRules(
            allowlist: Allowlist(entries: entries, allowsAny: self.allowAny), reverseAllowlist: ReverseAllowlist(entries: reverseEntries),
            users: users, maximumSessions: self.maxSessions, authenticationFailuresPerMinute: self.authFailuresPerMinute
        )
    }

    /// The config file's keys a SIGHUP puts in force: the access rules, the server-wide limits and the drain
    /// timeout. A change to any other key is logged as waiting for the next start.
    static let reloadableKeys: Set<String> = [
        "allow", "allow-any", "allow-reverse", "users", "max-sessions", "auth-failures-per-minute", "drain-timeout", "shutdown-grace",
    ]

    /// SIGHUP: the config file (if any) and the users file read again, and their access rules and limits put in force
    /// for new sessions and streams; a file that does not parse is refused with a log line, and the rules in force
    /// stay. Returns the settings now in force (nil: unchanged).
    func reload(server: TunnelServer, configFile: FlagFile?, logger: Logger) -> (command: ServerCommand, file: FlagFile?)? {
        do {
            let reloaded = try configFile.map { try Self.merged(configPath: $0.path, commandLine: Self.commandLineArguments()) }
            let settings = reloaded?.command ?? self
            let rules = try settings.accessRules()
            server.updateAccessRules(rules)
            let users = rules.users.map { ", \($0.count) user\($0.count == 1 ? "" : "s")" } ?? ""
            let allow = rules.allowlist.allowsAny ? "any target" : "\(rules.allowlist.entries.count) --allow entr\(rules.allowlist.entries.count == 1 ? "y" : "ies")"
            logger.info("SIGHUP: reloaded the access rules (\(allow)\(users); max-sessions \(rules.maximumSessions), auth-failures-per-minute \(rules.authenticationFailuresPerMinute), drain-timeout \(TimeAmount.fromSeconds(settings.drainSeconds).roundedText)); new sessions and streams follow them, open ones stay")
            if let reloaded, let configFile {
                let waiting = reloaded.file.keysChanged(since: configFile).filter { !Self.reloadableKeys.contains($0) }
                if !waiting.isEmpty {
                    logger.warning("SIGHUP: \(waiting.joined(separator: ", ")) changed in \(configFile.path) and take\(waiting.count == 1 ? "s" : "") effect at the next start (a reload changes only \(Self.reloadableKeys.sorted().joined(separator: ", ")))")
                }
            }
            return (settings, reloaded?.file ?? configFile)
        } catch {
            logger.error("SIGHUP: reload refused, the rules in force stay: \(error)")
            return nil
        }
    }

    private func serve(signals: AsyncStream<Int32>, hangups: AsyncStream<Void>, configFile: FlagFile?) async throws {
        HeapTuning.apply()
        let logger = try self.loggingOptions.makeLogger(label: "culvert.server")
        guard let listen = self.listen else {
            throw ValidationError("--listen HOST:PORT is required (or listen = \"HOST:PORT\" in the --config file)")
        }
        guard let (host, portText) = splitHostPort(listen), let port = Int(portText), (0...65535).contains(port) else {
            throw ValidationError("--listen '\(listen)' must be HOST:PORT, e.g. 127.0.0.1:8080")
        }
        let token = try self.tokenOptions.resolve()
        if token == nil && self.users == nil && !self.noAuth {
            fail("the server needs a token: pass --token, --token-file or set CULVERT_TOKEN, or --users FILE (or --no-auth to accept anyone)",
                 exitCode: 2)
        }
        if self.users != nil && self.noAuth {
            fail("--users and --no-auth contradict each other: named users prove their tokens; leave out --no-auth", exitCode: 2)
        }
        let rules: AccessRules
        do { rules = try self.accessRules() } catch let error as CLIError { fail(error.description, exitCode: 2) }
        if let users = rules.users {
            logger.info("\(users.count) user\(users.count == 1 ? "" : "s") from \(self.users ?? "")\(token == nil ? "" : "; clients that name no user use the shared token")")
        }
        if rules.allowlist.entries.isEmpty && !self.allowAny && !(rules.users?.values.contains { $0.allowlist != nil } ?? false) {
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
        var configuration = TunnelServer.Configuration(
            listenHost: host,
            listenPort: port,
            pathPrefix: prefix,
            session: session,
            allowlist: rules.allowlist,
            http: try self.http.settings(),
            tls: try self.tls.resolve(listenHost: host, logger: logger)
        )
        configuration.reverseAllowlist = rules.reverseAllowlist
        configuration.users = rules.users
        guard self.udpTimeout > 0 else { throw ValidationError("--udp-timeout must be more than 0 seconds") }
        configuration.udpTimeout = TimeAmount.fromSeconds(self.udpTimeout)
        configuration.maximumSessions = self.maxSessions
        configuration.authenticationFailuresPerMinute = self.authFailuresPerMinute
        // The endpoint comes first (its metrics go in the sessions' configuration); a scrape asks the server.
        let scraped = NIOLockedValueBox<TunnelServer?>(nil)
        let endpoint = try await self.metricsOptions.start { await scraped.withLockedValue { $0 }?.collectMetrics() }
        configuration.session.metrics = endpoint?.metrics
        let server: TunnelServer
        do {
            server = try await TunnelServer.start(configuration: configuration, group: MultiThreadedEventLoopGroup.singleton,
                                                  logger: logger)
        } catch {
            fail("\(error)")
        }
        scraped.withLockedValue { $0 = server }
        if let endpoint, let address = endpoint.channel.localAddress {
            logger.info("metrics at http://\(address.displayText)/metrics")
        }
        logger.info("culvert server listening on \(server.localAddress.map(\.displayText) ?? listen)\(configuration.tls == nil ? "" : " (HTTPS)"), path \(prefix)")
        // What the last reload put in force: the file to compare the next one with, and the drain timeout.
        let inForce = NIOLockedValueBox((command: self, file: configFile))
        let reloading = Task {
            for await _ in hangups {
                let file = inForce.withLockedValue { $0.file }
                if let reloaded = self.reload(server: server, configFile: file, logger: logger) {
                    inForce.withLockedValue { $0 = reloaded }
                }
            }
        }
        defer { reloading.cancel() }
        let signal = await SignalWaiter.wait(signals)
        let sessions = server.activeSessions
        let drainSeconds = inForce.withLockedValue { $0.command.drainSeconds }
        logger.info("\(SignalWaiter.name(of: signal)): shutting down: no new sessions, GOAWAY to \(sessions) session\(sessions == 1 ? "" : "s"); open streams get \(TimeAmount.fromSeconds(drainSeconds).roundedText) to finish (again to exit at once)")
        await server.shutdown(gracePeriod: .milliseconds(Int64(drainSeconds * 1000)))
        logger.info("drained: exiting")
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
