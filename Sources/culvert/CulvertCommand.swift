import ArgumentParser
import Foundation
import CulvertCore
import CulvertTransport

/// `culvert`: an HTTP tunnel that carries TCP connections through firewalls and proxies.
@main
struct CulvertCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "culvert",
        abstract: "Carry TCP connections through HTTP proxies and firewalls.",
        version: Self.versionText,
        subcommands: [ServerCommand.self, ClientCommand.self, ProbeCommand.self, DemoCommand.self, BenchCommand.self,
                      RelayCommand.self, HashTokenCommand.self]
    )

    /// What `--version` prints: the release, the commit it was built from and the wire protocol it speaks (a peer
    /// must speak the same one).
    static let versionText =
        "culvert \(CulvertVersion.string) (commit \(BuildInfo.commit), wire protocol \(HandshakeStateMachine.protocolVersion))"

    /// Runs the command; bad arguments exit with status 2 (not ArgumentParser's 64), as scripts expect.
    static func main() async {
        var parsed: (any ParsableCommand)?
        do {
            let arguments = ProxyOptions.expandingBareNetrc(
                Array(CommandLine.arguments.dropFirst()), home: ProcessInfo.processInfo.environment["HOME"] ?? NSHomeDirectory()
            )
            var command = try Self.parseAsRoot(arguments)
            parsed = command
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            if Self.exitCode(for: error) == .validationFailure {
                FileHandle.standardError.write(Data((Self.message(for: error, parsedCommand: parsed) + "\n").utf8))
                Foundation.exit(2)
            }
            Self.exit(withError: error)
        }
    }

    /// The message for a bad argument, with the usage of the subcommand it was given to (an error found after
    /// parsing, in `run()`, would otherwise show the top-level usage).
    private static func message(for error: any Error, parsedCommand: (any ParsableCommand)?) -> String {
        guard let command = parsedCommand, type(of: command) != Self.self else { return Self.fullMessage(for: error) }
        let subcommand = type(of: command)
        let name = subcommand.configuration.commandName ?? "\(subcommand)"
        return "Error: \(Self.message(for: error))\n"
            + "Usage: \(Self.usageString(for: subcommand))\n"
            + "  See 'culvert \(name) --help' for more information."
    }
}
