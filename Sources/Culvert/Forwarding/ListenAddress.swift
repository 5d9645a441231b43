/// Where a local listener that needs no fixed target listens (`-D [BIND:]PORT`, `-H [BIND:]PORT`): BIND defaults to
/// 127.0.0.1, so that a proxy is open to this machine only unless asked otherwise.
public struct ListenAddress: Hashable, Sendable, CustomStringConvertible {
    /// Local address to listen on (default 127.0.0.1).
    public var host: String
    /// Local port (0 picks a free one).
    public var port: Int

    public init(host: String = "127.0.0.1", port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `[BIND:]PORT` (an IPv6 BIND goes in brackets), as given to `flag` (named in the error).
    public init(parsing text: String, flag: String) throws(ForwardingError) {
        guard let fields = HostPortParser.fields(text) else {
            throw .invalidListen(flag: flag, text, "unclosed '[' in an IPv6 address")
        }
        let portText: String
        switch fields.count {
        case 1:
            self.host = "127.0.0.1"
            portText = fields[0]
        case 2:
            guard !fields[0].isEmpty else { throw .invalidListen(flag: flag, text, "BIND is empty") }
            self.host = fields[0]
            portText = fields[1]
        default:
            throw .invalidListen(
                flag: flag, text,
                text.contains("[") ? "expected [BIND:]PORT" : "expected [BIND:]PORT (an IPv6 BIND goes in brackets, e.g. [::1]:1080)"
            )
        }
        guard let port = Int(portText), (0...65535).contains(port) else {
            throw .invalidListen(flag: flag, text, "PORT '\(portText)' must be a number from 0 to 65535")
        }
        self.port = port
    }

    /// `host:port`, with an IPv6 host in brackets.
    public var description: String {
        self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)"
    }
}
