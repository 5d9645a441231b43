public import CulvertCore

/// Where a server lets clients open reverse listeners (`--allow-reverse [BIND:]PORT[-PORT]`, BIND `*` for any
/// address; without BIND, 127.0.0.1). Empty, the default: no reverse listener at all.
public struct ReverseAllowlist: Hashable, Sendable {
    public struct Entry: Hashable, Sendable, CustomStringConvertible {
        /// The bind address, lower-cased, or nil for `*`.
        public var host: String?
        public var ports: ClosedRange<Int>

        public init(host: String?, ports: ClosedRange<Int>) {
            self.host = host.map(Allowlist.Entry.asciiLowercased)
            self.ports = ports
        }

        /// Parses `[BIND:]PORT` or `[BIND:]PORT-PORT`; BIND may be `*` or a bracketed IPv6 address.
        public init(parsing text: String) throws(ForwardingError) {
            guard let fields = HostPortParser.fields(text), (1...2).contains(fields.count) else {
                throw .invalidAllowReverse(text, "expected [BIND:]PORT or [BIND:]PORT-PORT (BIND may be *)")
            }
            let host = fields.count == 2 ? fields[0] : "127.0.0.1"
            guard !host.isEmpty else { throw .invalidAllowReverse(text, "BIND is empty") }
            let portText = fields[fields.count - 1]
            let bounds = portText.split(separator: "-", omittingEmptySubsequences: false).map { Int($0) }
            guard (1...2).contains(bounds.count), let low = bounds.first ?? nil, let high = bounds.last ?? nil,
                (1...65535).contains(low), (1...65535).contains(high), low <= high
            else {
                throw .invalidAllowReverse(text, "PORT '\(portText)' must be a port from 1 to 65535 or a range A-B")
            }
            self.init(host: host == "*" ? nil : host, ports: low...high)
        }

        /// Whether a listener on `address` (bind host and port) is allowed; port 0 (any free port) only by an entry
        /// that allows every port.
        public func permits(_ address: TargetAddress) -> Bool {
            let portAllowed = address.port == 0 ? self.ports == 1...65535 : self.ports.contains(address.port)
            return portAllowed && (self.host == nil || self.host == Allowlist.Entry.asciiLowercased(address.host))
        }

        public var description: String {
            let host = self.host.map { $0.contains(":") ? "[\($0)]" : $0 } ?? "*"
            let ports = self.ports.lowerBound == self.ports.upperBound ? "\(self.ports.lowerBound)" : "\(self.ports.lowerBound)-\(self.ports.upperBound)"
            return "\(host):\(ports)"
        }
    }

    public var entries: [Entry]

    public init(entries: [Entry] = []) {
        self.entries = entries
    }

    public func permits(_ address: TargetAddress) -> Bool {
        self.entries.contains { $0.permits(address) }
    }
}
