import CulvertCore
import NIOCore
import NIOPosix

/// Checks a client's forwards before anything is bound, so that a mistake is one line at start-up, not a listener
/// that fails later: each BIND must be an address of this machine (or a wildcard), and no local port may be used by
/// two forwards.
public enum ForwardCheck {
    /// The first problem with `forwards`, as a one-line message, or nil when they can all be bound.
    public static func problem(with forwards: [ForwardSpec]) -> String? {
        Self.problem(with: forwards.map { LocalListener.forward($0) })
    }

    /// The first problem with `listeners` (forwards, SOCKS and HTTP proxies), as a one-line message, or nil when
    /// they can all be bound.
    public static func problem(with listeners: [LocalListener]) -> String? {
        var seen: [String: LocalListener] = [:]
        for listener in listeners {
            if let problem = Self.bindProblem(listener.address.host) {
                return "bad \(listener.flag) '\(listener.text)': \(problem)"
            }
            guard listener.address.port != 0 else { continue }
            let key = "\(listener.address.host.lowercased())|\(listener.address.port)|\(listener.isDatagram ? "udp" : "tcp")"
            if let earlier = seen[key] {
                return "bad \(listener.flag) '\(listener.text)': local port \(listener.address.port) is already taken by \(earlier.flag) '\(earlier.text)'; give each listener its own port"
            }
            seen[key] = listener
        }
        return nil
    }

    /// Why `host` cannot be listened on here, or nil when it can: it must resolve to a wildcard, a loopback address
    /// or an address of one of this machine's interfaces.
    static func bindProblem(_ host: String) -> String? {
        let addresses: [SocketAddress]
        if let literal = try? SocketAddress(ipAddress: host, port: 0) {
            addresses = [literal]
        } else if let resolved = try? SocketAddress.makeAddressResolvingHost(host, port: 0) {
            addresses = [resolved]
        } else {
            return "BIND '\(host)' is not an IP address or a host name this machine can resolve"
        }
        let local = Set(((try? System.enumerateDevices()) ?? []).compactMap { $0.address?.ipAddress })
        for address in addresses {
            guard let ip = address.ipAddress else { continue }
            if ip == "0.0.0.0" || ip == "::" || ip == "::1" || ip.hasPrefix("127.") || local.contains(ip) { return nil }
        }
        return "BIND '\(host)' is not an address of this machine (use 127.0.0.1, 0.0.0.0 for every interface, or one of its own addresses)"
    }
}
