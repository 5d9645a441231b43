/// A `host:port` that a stream connects to on the far side of the tunnel.
public struct TargetAddress: Hashable, Sendable, CustomStringConvertible {
    /// A host name, an IPv4 literal or an IPv6 literal (without brackets).
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// `host:port`, with IPv6 literals in brackets.
    public var description: String {
        self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)"
    }
}
