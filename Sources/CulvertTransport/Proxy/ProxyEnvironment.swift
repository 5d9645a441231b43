/// Picks the proxy for a server from the environment variables that curl reads.
///
/// For an `http://` server: `http_proxy`, then `HTTP_PROXY`; for `https://`: `https_proxy`, then `HTTPS_PROXY`;
/// then `all_proxy` / `ALL_PROXY`. Lower case wins over upper case. `no_proxy` / `NO_PROXY` is a comma-separated
/// list of host names, domain suffixes (`example.com` and `.example.com` both match `a.example.com`), IP
/// literals, or `*` for every host; it matches the server's host as written in the URL (CIDR ranges are not
/// supported). An empty variable counts as unset.
public struct ProxyEnvironment: Sendable {
    private let variables: [String: String]

    public init(_ variables: [String: String]) {
        self.variables = variables
    }

    /// The proxy to use for `server`, or nil for a direct connection.
    public func proxy(for server: ServerEndpoint) throws(TransportError) -> ProxyConfiguration? {
        let names =
            (server.usesTLS ? ["https_proxy", "HTTPS_PROXY"] : ["http_proxy", "HTTP_PROXY"]) + ["all_proxy", "ALL_PROXY"]
        guard let (name, value) = names.lazy.compactMap({ name in self.value(name).map { (name, $0) } }).first else {
            return nil
        }
        if self.bypasses(server.host) { return nil }
        do {
            return try ProxyConfiguration(url: value)
        } catch {
            throw .invalidProxyURL("\(name)=\(value)", reason: "\(error)")
        }
    }

    /// Whether `no_proxy` / `NO_PROXY` exempts `host`.
    public func bypasses(_ host: String) -> Bool {
        guard let list = self.value("no_proxy") ?? self.value("NO_PROXY") else { return false }
        let host = host.lowercased()
        for rawEntry in list.split(whereSeparator: { $0 == "," || $0 == " " }) {
            var entry = rawEntry.lowercased()
            if entry == "*" { return true }
            if entry.hasPrefix("[") && entry.hasSuffix("]") { entry = String(entry.dropFirst().dropLast()) }
            while entry.hasPrefix(".") { entry.removeFirst() }
            guard !entry.isEmpty else { continue }
            if host == entry || host.hasSuffix("." + entry) { return true }
        }
        return false
    }

    private func value(_ name: String) -> String? {
        guard let value = self.variables[name], !value.isEmpty else { return nil }
        return value
    }
}
