import ArgumentParser
import CulvertTransport

/// `culvert`: an HTTP tunnel that carries TCP connections through firewalls and proxies.
@main
struct CulvertCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "culvert",
        abstract: "Carry TCP connections through HTTP proxies and firewalls.",
        version: CulvertVersion.string,
        subcommands: [ServerCommand.self, ClientCommand.self, DemoCommand.self, BenchCommand.self]
    )
}
