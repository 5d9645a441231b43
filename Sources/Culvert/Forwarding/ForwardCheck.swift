import CulvertCore
import NIOCore
import NIOPosix

/// Checks a client's forwards before anything is bound, so that a mistake is one line at start-up, not a listener
/// that fails later: each BIND must be an address of this machine (or a wildcard), and no local port may be used by
/// two forwards.
public enum ForwardCheck {
    /// The first problem with `forwards`, as a one-line message, or nil when they can all be bound.
    public static func problem(with forwards: [ForwardSpec]) -> String? {
        var seen: [String: ForwardSpec] = [:]
        for forward in forwards {
            if let problem = Self.bindProblem(forward.bindHost) {
                return "bad -L '\(Self.text(of: forward))': \(problem)"
            }
            guard forward.bindPort != 0 else { continue }
            let key = "\(forward.bindHost.lowercased())|\(forward.bindPort)"
            if let earlier = seen[key] {
                return "bad -L '\(Self.text(of: forward))': local port \(forward.bindPort) is already forwarded by -L '\(Self.text(of: earlier))'; give each forward its own port"
            }
            seen[key] = forward
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

    private static func text(of forward: ForwardSpec) -> String {
        let bind = forward.bindHost.contains(":") ? "[\(forward.bindHost)]" : forward.bindHost
        let host = forward.target.host.contains(":") ? "[\(forward.target.host)]" : forward.target.host
        return "\(bind):\(forward.bindPort):\(host):\(forward.target.port)"
    }
}
