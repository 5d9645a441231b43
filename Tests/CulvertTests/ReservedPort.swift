import Glibc
import Synchronization

/// Loopback ports (free for TCP and UDP) for listeners a test starts later (a `-R` listener, a child `culvert server`), taken from
/// 12000–19999: below the range real-proxy fixtures choose from (20000–31999) and below Linux's ephemeral range
/// (32768 and up), so that neither a port bound with port 0 nor an outgoing connection of a test running alongside can
/// be given the port in between; and each port is handed out at most once per test process.
enum ReservedPort {
    static let range = 12000..<20000
    private static let handedOut = Atomic<Int>(Int.random(in: 0..<8000))

    struct NoneFree: Error, CustomStringConvertible {
        var description: String { "no loopback port in \(ReservedPort.range) is free" }
    }

    /// The next port of the range that nothing holds now; throws when every one is taken.
    static func take() throws -> Int {
        for _ in 0..<range.count {
            let offset = handedOut.wrappingAdd(1, ordering: .relaxed).oldValue
            let port = range.lowerBound + offset % range.count
            if isFree(port) { return port }
        }
        throw NoneFree()
    }

    /// Whether both a TCP and a UDP socket can bind 127.0.0.1:`port` now (some listeners take both, as dnsmasq does).
    static func isFree(_ port: Int) -> Bool {
        isFree(port, type: Int32(SOCK_STREAM.rawValue)) && isFree(port, type: Int32(SOCK_DGRAM.rawValue))
    }

    /// Whether a socket of `type` can bind 127.0.0.1:`port` (without SO_REUSEADDR: a TCP port in TIME_WAIT is taken).
    private static func isFree(_ port: Int, type: Int32) -> Bool {
        let socket = Glibc.socket(AF_INET, type, 0)
        guard socket >= 0 else { return false }
        defer { close(socket) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        return bound == 0
    }
}
