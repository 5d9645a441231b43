public import CulvertCore

/// A local forward, `-L [BIND:]PORT:HOST:HOSTPORT`: connections accepted on BIND:PORT become streams to
/// HOST:HOSTPORT on the server's side.
public struct ForwardSpec: Hashable, Sendable, CustomStringConvertible {
    /// Local address to listen on (default 127.0.0.1).
    public var bindHost: String
    /// Local port (0 picks a free one).
    public var bindPort: Int
    public var target: TargetAddress

    public init(bindHost: String = "127.0.0.1", bindPort: Int, target: TargetAddress) {
        self.bindHost = bindHost
        self.bindPort = bindPort
        self.target = target
    }

    /// Parses `[BIND:]PORT:HOST:HOSTPORT`; IPv6 addresses go in brackets.
    public init(parsing fullText: String) throws(ForwardingError) {
        // A `/udp` suffix forwards UDP datagrams; `/tcp`, the default, may be written out.
        var text = fullText
        var transport = TargetAddress.Transport.tcp
        if text.lowercased().hasSuffix("/udp") {
            transport = .udp
            text.removeLast(4)
        } else if text.lowercased().hasSuffix("/tcp") {
            text.removeLast(4)
        } else if let slash = text.lastIndex(of: "/") {
            throw .invalidForward(fullText, "unknown protocol '\(text[text.index(after: slash)...])' (use /tcp, the default, or /udp)")
        }
        guard let fields = HostPortParser.fields(text) else {
            throw .invalidForward(fullText, "unclosed '[' in an IPv6 address")
        }
        let bind: String
        let rest: ArraySlice<String>
        switch fields.count {
        case 3:
            bind = "127.0.0.1"
            rest = fields[...]
        case 4:
            bind = fields[0]
            rest = fields[1...]
            guard !bind.isEmpty else { throw .invalidForward(fullText, "BIND is empty") }
        default:
            if fields.count > 4 && !text.contains("[") {
                throw .invalidForward(fullText, "IPv6 addresses go in brackets, e.g. [::1]:8080:db.internal:5432 or 8080:[fd00::5]:5432")
            }
            throw .invalidForward(
                fullText, "expected [BIND:]PORT:HOST:HOSTPORT, got \(fields.count) field\(fields.count == 1 ? "" : "s")"
            )
        }
        let values = Array(rest)
        guard let port = Int(values[0]), (0...65535).contains(port) else {
            throw .invalidForward(fullText, "PORT '\(values[0])' must be a number from 0 to 65535")
        }
        guard !values[1].isEmpty else { throw .invalidForward(fullText, "HOST is empty") }
        guard let hostPort = Int(values[2]), (1...65535).contains(hostPort) else {
            throw .invalidForward(fullText, "HOSTPORT '\(values[2])' must be a number from 1 to 65535")
        }
        self.init(bindHost: bind, bindPort: port, target: TargetAddress(host: values[1], port: hostPort, transport: transport))
    }

    /// Where it listens, as `host:port` (an IPv6 host in brackets).
    public var listenAddress: ListenAddress { ListenAddress(host: self.bindHost, port: self.bindPort) }

    /// The forward as `-L` takes it: `BIND:PORT:HOST:HOSTPORT`.
    public var text: String { "\(self.listenAddress):\(self.target)" }

    public var description: String { "\(self.listenAddress) -> \(self.target)" }
}

/// Errors in forwarding settings and listeners; each says which part is wrong.
public enum ForwardingError: Error, Hashable, Sendable, CustomStringConvertible {
    case invalidForward(String, String)
    case invalidAllow(String, String)
    case invalidAllowReverse(String, String)
    case bindFailed(address: String, reason: String)
    /// A listener's `[BIND:]PORT` (given to `flag`: -D, -H) is malformed.
    case invalidListen(flag: String, String, String)
    /// `--socks-user` is malformed (the text is not repeated: it holds a password).
    case invalidSOCKSUser(String)
    /// `--stdio` cannot use this process's standard input or output.
    case standardIOUnusable(String)

    public var description: String {
        switch self {
        case .invalidForward(let text, let reason): "bad -L '\(text)': \(reason)"
        case .invalidAllow(let text, let reason): "bad --allow '\(text)': \(reason)"
        case .invalidAllowReverse(let text, let reason): "bad --allow-reverse '\(text)': \(reason)"
        case .bindFailed(let address, let reason): "cannot listen on \(address): \(reason)"
        case .invalidListen(let flag, let text, let reason): "bad \(flag) '\(text)': \(reason)"
        case .invalidSOCKSUser(let reason): "bad --socks-user: \(reason)"
        case .standardIOUnusable(let reason):
            "--stdio needs standard input and output to be pipes, sockets or a terminal, not a file or /dev/null (\(reason)); pipe a file in with cat"
        }
    }
}
