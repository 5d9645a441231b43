public import CulvertTransport
public import Foundation

/// Remembers which transport won the negotiation for each (server, proxy), in `culvert/transports.json` under the
/// user's cache directory (`$XDG_CACHE_HOME`, else `~/.cache`), so that the next start tries it first.
public struct NegotiationCache: Sendable {
    public let fileURL: URL

    public init(fileURL: URL) {
        self.fileURL = fileURL
    }

    /// The cache in the user's cache directory; nil when neither `XDG_CACHE_HOME` nor `HOME` is set.
    public static func userCache(environment: [String: String] = ProcessInfo.processInfo.environment) -> NegotiationCache? {
        let base: URL
        if let xdg = environment["XDG_CACHE_HOME"], !xdg.isEmpty {
            base = URL(fileURLWithPath: xdg)
        } else if let home = environment["HOME"], !home.isEmpty {
            base = URL(fileURLWithPath: home).appendingPathComponent(".cache")
        } else {
            return nil
        }
        return NegotiationCache(fileURL: base.appendingPathComponent("culvert").appendingPathComponent("transports.json"))
    }

    /// The key of a (server, proxy) pair.
    public static func key(server: ServerEndpoint, proxy: ProxyConfiguration?) -> String {
        "\(server) via \(proxy?.description ?? "direct")"
    }

    /// The remembered winner for `server` through `proxy`.
    public func winner(server: ServerEndpoint, proxy: ProxyConfiguration?) -> TransportKind? {
        self.entries()[Self.key(server: server, proxy: proxy)].flatMap(TransportKind.init(rawValue:))
    }

    /// Remembers `kind` (nil forgets) for `server` through `proxy`. Failing to write is not an error worth stopping
    /// for: the cache only saves time.
    public func remember(_ kind: TransportKind?, server: ServerEndpoint, proxy: ProxyConfiguration?) {
        var entries = self.entries()
        entries[Self.key(server: server, proxy: proxy)] = kind?.rawValue
        try? FileManager.default.createDirectory(at: self.fileURL.deletingLastPathComponent(), withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        if let data = try? encoder.encode(entries) { try? data.write(to: self.fileURL, options: .atomic) }
    }

    private func entries() -> [String: String] {
        guard let data = try? Data(contentsOf: self.fileURL) else { return [:] }
        return (try? JSONDecoder().decode([String: String].self, from: data)) ?? [:]
    }
}
