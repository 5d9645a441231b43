public import CulvertCore

/// Which targets a server lets streams reach: `--allow HOST:PORT` entries, or everything with `--allow-any`.
///
/// Host `*` matches any host, port `*` any port and `A-B` a range. Hosts match the name exactly as the client sent
/// it in OPEN (case-insensitively), not the address it resolves to.
public struct Allowlist: Hashable, Sendable {
    public struct Entry: Hashable, Sendable, CustomStringConvertible {
        /// Lower-cased host, or nil for `*`.
        public var host: String?
        public var ports: ClosedRange<Int>

        /// Exactly `host:port`.
        public init(host: String, port: Int) {
            self.host = Self.asciiLowercased(host)
            self.ports = port...port
        }

        /// Parses `HOST:PORT`, `HOST:*`, `HOST:A-B`, `*:PORT` or `[IPv6]:PORT`.
        public init(parsing text: String) throws(ForwardingError) {
            guard let (host, port) = HostPortParser.split(text), !host.isEmpty, !port.isEmpty else {
                throw .invalidAllow(text, "expected HOST:PORT (host may be *, port may be * or A-B)")
            }
            self.host = host == "*" ? nil : Self.asciiLowercased(host)
            if port == "*" {
                self.ports = 1...65535
            } else if let dash = port.firstIndex(of: "-") {
                guard let low = Int(port[..<dash]), let high = Int(port[port.index(after: dash)...]),
                    (1...65535).contains(low), (1...65535).contains(high), low <= high
                else {
                    throw .invalidAllow(text, "port range '\(port)' must be A-B with 1 <= A <= B <= 65535")
                }
                self.ports = low...high
            } else {
                guard let value = Int(port), (1...65535).contains(value) else {
                    throw .invalidAllow(text, "port '\(port)' must be a number from 1 to 65535, * or A-B")
                }
                self.ports = value...value
            }
        }

        public func matches(_ target: TargetAddress) -> Bool {
            (self.host == nil || self.host == Self.asciiLowercased(target.host)) && self.ports.contains(target.port)
        }

        /// `text` with A–Z folded to a–z and nothing else: host names compare case-insensitively in ASCII only
        /// (RFC 4343), so that `K` (KELVIN SIGN) or `ſ` never fold into a name that the allowlist names.
        static func asciiLowercased(_ text: String) -> String {
            String(decoding: text.utf8.map { (0x41...0x5A).contains($0) ? $0 + 0x20 : $0 }, as: UTF8.self)
        }

        public var description: String {
            let host = self.host.map { $0.contains(":") ? "[\($0)]" : $0 } ?? "*"
            let port =
                self.ports == 1...65535 ? "*"
                : self.ports.lowerBound == self.ports.upperBound ? "\(self.ports.lowerBound)"
                : "\(self.ports.lowerBound)-\(self.ports.upperBound)"
            return "\(host):\(port)"
        }
    }

    public var entries: [Entry]
    public var allowsAny: Bool

    public init(entries: [Entry] = [], allowsAny: Bool = false) {
        self.entries = entries
        self.allowsAny = allowsAny
    }

    public static let any = Allowlist(allowsAny: true)

    public func permits(_ target: TargetAddress) -> Bool {
        self.allowsAny || self.entries.contains { $0.matches(target) }
    }
}
