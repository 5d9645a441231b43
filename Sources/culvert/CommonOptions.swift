import ArgumentParser
import Culvert
import CulvertTransport
import Foundation
import Logging

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
            guard let contents = try? String(contentsOfFile: tokenFile, encoding: .utf8) else {
                throw CLIError("cannot read --token-file \(tokenFile)")
            }
            let token = contents.split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
            guard !token.isEmpty else { throw CLIError("--token-file \(tokenFile) is empty") }
            return token
        }
        if let token = ProcessInfo.processInfo.environment["CULVERT_TOKEN"], !token.isEmpty { return token }
        return nil
    }
}

/// `--log-level`.
struct LoggingOptions: ParsableArguments {
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func makeLogger(label: String) throws -> Logger {
        guard let level = Logger.Level(rawValue: self.logLevel) else {
            throw CLIError("unknown --log-level '\(self.logLevel)'; use trace, debug, info, notice, warning, error or critical")
        }
        LoggingBootstrap.once(level: level)
        var logger = Logger(label: label)
        logger.logLevel = level
        return logger
    }
}

enum LoggingBootstrap {
    nonisolated(unsafe) private static var done = false

    static func once(level: Logger.Level) {
        guard !done else { return }
        done = true
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
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
    FileHandle.standardError.write(Data("culvert: error: \(message)\n".utf8))
    exit(exitCode)
}
