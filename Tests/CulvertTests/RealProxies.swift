import CulvertTools
import Foundation

/// tinyproxy with `fixtures/proxies/tinyproxy-forward.conf` (Debian's defaults) plus `extraLines`.
func startTinyproxy(extraLines: [String] = []) async throws -> RealProxy {
    try await RealProxy.start(.tinyproxy, configuration: fixturesDirectory() + "/proxies/tinyproxy-forward.conf", extraLines: extraLines)
}

/// nginx as a reverse proxy in front of the culvert server on `upstreamPort`, with `fixtures/proxies/<configuration>`.
func startNginx(upstreamPort: Int, configuration: String = "nginx-reverse.conf") async throws -> RealProxy {
    try await RealProxy.start(.nginx, configuration: fixturesDirectory() + "/proxies/" + configuration, upstreamPort: upstreamPort)
}

/// The repository's fixtures/ directory.
func fixturesDirectory(file: String = #filePath) -> String {
    URL(fileURLWithPath: file).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("fixtures").path
}

/// nginx as a plain web server (`fixtures/targets/nginx-web.conf`): every path answers with a line naming the method,
/// the path and the Host header. A target for the SOCKS5 and HTTP proxy listeners.
func startWebTarget() async throws -> RealProxy {
    try await RealProxy.start(.nginx, configuration: fixturesDirectory() + "/targets/nginx-web.conf")
}
