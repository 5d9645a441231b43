import ArgumentParser
import Culvert
import CulvertCore
import CulvertTransport
import Foundation
import Logging
import NIOCore

/// `--token`, `--token-file` and `CULVERT_TOKEN`, shared by server and client.
struct TokenOptions: ParsableArguments {
    @Option(help: "Shared secret (or set CULVERT_TOKEN). It never crosses the wire: both sides prove it with HMAC.")
    var token: String?

    @Option(help: "Read the shared secret from this file (first line).")
    var tokenFile: String?

    /// The token from the flag, the file or the environment, in that order.
    func resolve() throws -> String? {
        if let token, !token.isEmpty { return token }
        if let tokenFile {
            let contents: String
            do {
                contents = try String(contentsOfFile: tokenFile, encoding: .utf8)
            } catch {
                throw CLIError("cannot read --token-file \(tokenFile): \(describeUnreadable(tokenFile))")
            }
            let token = contents.split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
            guard !token.isEmpty else { throw CLIError("--token-file \(tokenFile) is empty") }
            return token
        }
        if let token = ProcessInfo.processInfo.environment["CULVERT_TOKEN"], !token.isEmpty { return token }
        return nil
    }
}

/// `--user` and `CULVERT_USER`: the named user a client authenticates as, against a server's users file.
struct UserOptions: ParsableArguments {
    @Option(help: "Authenticate as this user of the server's users file (or set CULVERT_USER); --token is then that user's token.")
    var user: String?

    /// The user from the flag or the environment; nil for the server's shared token.
    func resolve() throws -> String? {
        let environment = ProcessInfo.processInfo.environment["CULVERT_USER"]
        guard let user = self.user ?? environment.flatMap({ $0.isEmpty ? nil : $0 }) else { return nil }
        let source = self.user == nil ? "CULVERT_USER" : "--user"
        guard UserAccount.isValidName(user) else {
            throw CLIError("\(source) '\(user)' is not a user name: 1 to 64 of A-Z, a-z, 0-9 and . _ - @")
        }
        return user
    }
}

/// `--log-level`, `-v`/`-q` and `--log-format`.
struct LoggingOptions: ParsableArguments {
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (default: info; warning with --stdio).")
    var logLevel: String?

    @Flag(name: .shortAndLong, help: "More log lines: -v one level more (debug), -vv two (trace).")
    var verbose: Int

    @Flag(name: .shortAndLong, help: "Fewer log lines: -q one level fewer (warning), -qq two (error).")
    var quiet: Int

    @Option(help: ArgumentHelp("Log line format: text, or json (one object per line, the fields as keys). Default: text on a terminal, json otherwise.", valueName: "text|json"))
    var logFormat: String?

    /// Whether log lines are JSON objects: `--log-format`, or else whether standard error is not a terminal.
    func logsAsJSON() throws -> Bool {
        switch self.logFormat {
        case nil: isatty(2) == 0
        case "json": true
        case "text": false
        case let other?: throw CLIError("unknown --log-format '\(other)'; use text or json")
        }
    }

    /// A logger at `--log-level` (or `defaultLevel`), moved by `-v` and `-q`, in `--log-format`.
    func makeLogger(label: String, defaultLevel: Logger.Level = .info) throws -> Logger {
        guard let base = self.logLevel.map({ Logger.Level(rawValue: $0) }) ?? defaultLevel else {
            throw CLIError("unknown --log-level '\(self.logLevel ?? "")'; use trace, debug, info, notice, warning, error or critical")
        }
        let levels = Logger.Level.allCases
        let index = min(max(levels.firstIndex(of: base)! - self.verbose + self.quiet, 0), levels.count - 1)
        let level = levels[index]
        LoggingBootstrap.once(level: level, json: try self.logsAsJSON())
        var logger = Logger(label: label)
        logger.logLevel = level
        return logger
    }
}

enum LoggingBootstrap {
    nonisolated(unsafe) private static var done = false

    static func once(level: Logger.Level, json: Bool) {
        guard !done else { return }
        done = true
        LoggingSystem.bootstrap { label in
            if json {
                var handler = JSONLogHandler(label: label)
                handler.logLevel = level
                return handler
            }
            var handler = StatusLineLogHandler(inner: StreamLogHandler.standardError(label: label))
            handler.logLevel = level
            return handler
        }
    }
}

/// An error the CLI reports as one line on standard error, exiting with `exitCode`.
struct CLIError: Error, CustomStringConvertible {
    var description: String
    var exitCode: Int32

    init(_ description: String, exitCode: Int32 = 1) {
        self.description = description
        self.exitCode = exitCode
    }
}

/// Prints `culvert: error: …` and exits non-zero; used for failures that are not about argument syntax.
func fail(_ message: String, exitCode: Int32 = 1) -> Never {
    TerminalStatusLine.shared.clear()
    FileHandle.standardError.write(Data("culvert: error: \(message)\n".utf8))
    exit(exitCode)
}

/// Flow-control, memory, keepalive and protection settings shared by server and client.
struct TuningOptions: ParsableArguments {
    @Option(help: "Largest DATA frame payload in KiB, so that one bulk stream cannot hold the tunnel for long.")
    var maxFrameKib: Int = 32

    @Option(help: "Initial per-stream window in KiB.")
    var initialWindowKib: Int = 256

    @Option(help: "Largest per-stream window in KiB (windows grow while the reader keeps up).")
    var maxWindowKib: Int = 16 * 1024

    @Option(help: "Receive memory per session in MiB; past it credit is withheld, nothing is dropped.")
    var sessionMemoryMib: Int = 64

    @Option(help: "Maximum streams per session.")
    var maxStreams: Int = 4096

    @Option(help: "Seconds without traffic before a keepalive ping (keep it below the proxies' idle timeouts).")
    var keepalive: Double = 25

    @Option(help: "Seconds a keepalive ping may wait for its pong before the connection is declared dead.")
    var keepaliveTimeout: Double = 10

    @Option(help: "zlib level when compressing, 1 (fastest) to 9 (smallest).")
    var compressLevel: Int32 = 6

    @Option(help: "zlib window bits when compressing, 9 to 15 (memory per stream: 2^(bits+2) + 2^(mem-level+9)).")
    var compressWindowBits: Int32 = 15

    @Option(help: "zlib memory level when compressing, 1 to 9.")
    var compressMemLevel: Int32 = 8

    @Flag(help: "Turn off end-to-end session encryption, which is on by default; both sides must say so. Only where TLS is end to end and pinned: otherwise a proxy that opens TLS can read and alter the tunnel.")
    var noSessionEncryption = false

    func validate() throws {
        guard (1...1024).contains(self.maxFrameKib) else { throw ValidationError("--max-frame-kib must be 1 to 1024") }
        guard self.initialWindowKib >= 1, self.maxWindowKib >= self.initialWindowKib, self.maxWindowKib <= 1024 * 1024 else {
            throw ValidationError("windows must satisfy 1 <= --initial-window-kib <= --max-window-kib <= 1048576")
        }
        guard self.sessionMemoryMib >= 1 else { throw ValidationError("--session-memory-mib must be at least 1") }
        guard self.maxStreams >= 1 else { throw ValidationError("--max-streams must be at least 1") }
        guard self.keepalive > 0, self.keepaliveTimeout > 0 else {
            throw ValidationError("--keepalive and --keepalive-timeout must be positive")
        }
        guard (1...9).contains(self.compressLevel), (9...15).contains(self.compressWindowBits),
            (1...9).contains(self.compressMemLevel)
        else {
            throw ValidationError("--compress-level must be 1-9, --compress-window-bits 9-15, --compress-mem-level 1-9")
        }
    }

    /// A session configuration with these settings.
    func sessionConfiguration(token: String?, authenticationRequired: Bool = true, compression: Bool) -> SessionConfiguration {
        var configuration = SessionConfiguration(
            token: token,
            authenticationRequired: authenticationRequired,
            mux: MuxConfiguration(
                initialStreamWindow: self.initialWindowKib * 1024,
                maximumStreamWindow: self.maxWindowKib * 1024,
                sessionMemoryLimit: self.sessionMemoryMib * 1024 * 1024,
                maximumDataPayload: self.maxFrameKib * 1024,
                maximumStreams: self.maxStreams
            ),
            keepaliveInterval: .milliseconds(Int64(self.keepalive * 1000)),
            keepaliveTimeout: .milliseconds(Int64(self.keepaliveTimeout * 1000)),
            compression: CompressionSettings(
                enabled: compression,
                level: self.compressLevel,
                windowBits: self.compressWindowBits,
                memoryLevel: self.compressMemLevel
            )
        )
        configuration.sealing = !self.noSessionEncryption
        return configuration
    }
}

/// `--proxy` and `--no-proxy`; without either, the proxy environment variables that curl reads. The proxy's
/// credentials: `--proxy-user`, else `CULVERT_PROXY_USER`, else the proxy URL's user info, else `--netrc`.
struct ProxyOptions: ParsableArguments {
    @Option(help: "Forward proxy http://[USER:PASS@]HOST:PORT (default: HTTP_PROXY / HTTPS_PROXY / ALL_PROXY, minus NO_PROXY).")
    var proxy: String?

    @Flag(help: "Connect directly, ignoring the proxy environment variables.")
    var noProxy = false

    @Option(help: ArgumentHelp(
        "The proxy's credentials, USER:PASS (or DOMAIN\\USER:PASS), in place of the proxy URL's; the environment's CULVERT_PROXY_USER keeps them out of the process list.",
        valueName: "USER:PASS"
    ))
    var proxyUser: String?

    @Option(name: .customLong("netrc"), help: ArgumentHelp(
        "Take the proxy's credentials from a netrc file (curl's format; --netrc alone: ~/.netrc) when nothing else gives them.",
        valueName: "FILE"
    ))
    var netrc: String?

    /// The proxy to use for `server`, or nil; logs where it came from (never the credentials).
    func resolve(for server: ServerEndpoint, logger: Logger) throws -> ProxyConfiguration? {
        if self.noProxy {
            guard self.proxy == nil else { throw ValidationError("--proxy and --no-proxy contradict each other") }
            return nil
        }
        let found: ProxyConfiguration?
        do {
            if let proxy = self.proxy {
                found = try ProxyConfiguration(url: proxy)
                logger.debug("through the proxy \(found!)")
            } else {
                found = try ProxyEnvironment(ProcessInfo.processInfo.environment).proxy(for: server)
                if let found { logger.info("through the proxy \(found) (from the environment; --no-proxy ignores it)") }
            }
        } catch {
            throw ValidationError(error.description)
        }
        guard let configuration = found else { return nil }
        return try self.withCredentials(configuration, logger: logger)
    }

    /// `configuration` with the credentials the options, the environment or the netrc file give.
    private func withCredentials(_ configuration: ProxyConfiguration, logger: Logger) throws -> ProxyConfiguration {
        if let given = self.proxyUser ?? ProcessInfo.processInfo.environment["CULVERT_PROXY_USER"] {
            let source = self.proxyUser != nil ? "--proxy-user" : "CULVERT_PROXY_USER"
            guard let colon = given.firstIndex(of: ":"), colon != given.startIndex else {
                throw ValidationError("\(source) must be USER:PASS (or DOMAIN\\USER:PASS)")
            }
            logger.debug("proxy credentials from \(source) for user \(given[..<colon])")
            return configuration.withCredentials(username: String(given[..<colon]), password: String(given[given.index(after: colon)...]))
        }
        guard !configuration.hasCredentials, let path = self.netrc else { return configuration }
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ValidationError("--netrc \(path): cannot be read (\((error as NSError).localizedDescription)); give a readable netrc file, or leave out --netrc")
        }
        guard let (login, password) = NetrcFile(text: text).credentials(for: configuration.host) else {
            logger.info("--netrc \(path) has no entry for the proxy \(configuration.host) (and no default): no proxy credentials")
            return configuration
        }
        logger.debug("proxy credentials from \(path) for user \(login)")
        return configuration.withCredentials(username: login, password: password)
    }

    /// The arguments with a bare `--netrc` (no file after it, or an argument that is not a file) made
    /// `--netrc=~/.netrc`: ArgumentParser has no options whose value is optional, and curl's `--netrc` takes none.
    static func expandingBareNetrc(_ arguments: [String], home: String) -> [String] {
        var result: [String] = []
        var index = arguments.startIndex
        while index < arguments.endIndex {
            let argument = arguments[index]
            result.append(argument)
            if argument == "--netrc" {
                let next = arguments.index(after: index)
                var isDirectory: ObjCBool = false
                let nextIsFile = next < arguments.endIndex && !arguments[next].hasPrefix("-")
                    && FileManager.default.fileExists(atPath: arguments[next], isDirectory: &isDirectory) && !isDirectory.boolValue
                if !nextIsFile { result[result.count - 1] = "--netrc=\(home)/.netrc" }
            }
            index = arguments.index(after: index)
        }
        return result
    }
}
