import Foundation
import PackagePlugin

/// Writes `BuildInfo.swift` before every build: the git commit the binary is built from (with `-dirty` when the work
/// tree has uncommitted changes), which `culvert --version` prints. A prebuild command with the system's shell and
/// git, because the commit is not known to the manifest and a build command would run only when its inputs change;
/// the file is rewritten only when its text changes, so an unchanged commit recompiles nothing.
@main
struct BuildInfoPlugin: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: any Target) async throws -> [Command] {
        let output = context.pluginWorkDirectoryURL.appendingPathComponent("Generated")
        let file = output.appendingPathComponent("BuildInfo.swift").path
        let package = context.package.directoryURL.path
        let script = """
            set -u
            mkdir -p "$2"
            commit=$(git -C "$1" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
            if [ "$commit" != unknown ] && ! git -C "$1" diff --quiet HEAD -- 2>/dev/null; then commit="$commit-dirty"; fi
            text="/// Written by BuildInfoPlugin before each build.
            enum BuildInfo {
                /// The git commit this binary was built from (\\"unknown\\" outside a git checkout).
                static let commit = \\"$commit\\"
            }"
            if [ ! -f "$3" ] || [ "$(cat "$3")" != "$text" ]; then printf '%s\\n' "$text" > "$3"; fi
            """
        return [
            .prebuildCommand(
                displayName: "Recording the git commit for --version",
                executable: URL(fileURLWithPath: "/bin/sh"),
                arguments: ["-c", script, "build-info", package, output.path, file],
                outputFilesDirectory: output
            )
        ]
    }
}
