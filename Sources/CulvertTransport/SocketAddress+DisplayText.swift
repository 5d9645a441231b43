public import NIOCore

extension SocketAddress {
    /// The address as people write it: `127.0.0.1:8080`, `[::1]:8080`, or a socket path (NIO's own description,
    /// `[IPv4]127.0.0.1/127.0.0.1:8080`, is for debugging).
    public var displayText: String {
        switch self {
        case .v4:
            "\(self.ipAddress ?? "?"):\(self.port ?? 0)"
        case .v6:
            "[\(self.ipAddress ?? "?")]:\(self.port ?? 0)"
        case .unixDomainSocket:
            self.pathname ?? "unix socket"
        }
    }
}
