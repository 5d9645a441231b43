import ArgumentParser
import Foundation
import CulvertTransport

/// `culvert`: an HTTP tunnel that carries TCP connections through firewalls and proxies.
@main
struct CulvertCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "culvert",
        abstract: "Carry TCP connections through HTTP proxies and firewalls.",
        version: CulvertVersion.string,
        subcommands: [ServerCommand.self, ClientCommand.self, ProbeCommand.self, DemoCommand.self, BenchCommand.self,
                      RelayCommand.self]
    )

    /// Runs the command; bad arguments exit with status 2 (not ArgumentParser's 64), as scripts expect.
    static func main() async {
        do {
            var command = try Self.parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            if Self.exitCode(for: error) == .validationFailure {
                FileHandle.standardError.write(Data((Self.fullMessage(for: error) + "\n").utf8))
                Foundation.exit(2)
            }
            Self.exit(withError: error)
        }
    }
}
