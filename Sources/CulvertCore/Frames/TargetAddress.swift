/// A `host:port` that a stream connects to on the far side of the tunnel, over TCP or UDP.
public struct TargetAddress: Hashable, Sendable, CustomStringConvertible {
    /// What a stream to the target carries: a TCP connection's bytes, or UDP datagrams (each length-prefixed on the
    /// stream, see docs/PROTOCOL.md, "UDP").
    public enum Transport: Hashable, Sendable {
        case tcp
        case udp
    }

    /// A host name, an IPv4 literal or an IPv6 literal (without brackets).
    public var host: String
    public var port: Int
    public var transport: Transport

    public init(host: String, port: Int, transport: Transport = .tcp) {
        self.host = host
        self.port = port
        self.transport = transport
    }

    /// `host:port`, with IPv6 literals in brackets, and `/udp` for a UDP target.
    public var description: String {
        let address = self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)"
        return self.transport == .udp ? address + "/udp" : address
    }
}
