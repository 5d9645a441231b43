import Foundation
import PackagePlugin

/// `swift package --allow-network-connections local proxy-matrix [ARGUMENTS]`: builds the `proxy-matrix` runner and
/// runs `scripts/proxy-matrix` with it, which installs missing proxies (as root), runs culvert through each and writes
/// docs/compatibility.md. Arguments are passed on (e.g. `--check`, `--only nginx`, `--idle-seconds 70`).
@main
struct ProxyMatrixPlugin: CommandPlugin {
    func performCommand(context: PluginContext, arguments: [String]) async throws {
        let build = try self.packageManager.build(.product("proxy-matrix"), parameters: .init(configuration: .debug, logging: .concise))
        guard build.succeeded, let runner = build.builtArtifacts.first(where: { $0.kind == .executable }) else {
            Diagnostics.error("building proxy-matrix failed:\n\(build.logText)")
            return
        }
        let script = context.package.directoryURL.appendingPathComponent("scripts/proxy-matrix")
        let process = Process()
        process.executableURL = script
        process.currentDirectoryURL = context.package.directoryURL
        process.arguments = ["--runner", runner.url.path] + arguments
        try process.run()
        process.waitUntilExit()
        if process.terminationStatus != 0 {
            Diagnostics.error("proxy-matrix exited with status \(process.terminationStatus)")
        }
    }
}
