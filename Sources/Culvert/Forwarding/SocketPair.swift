import NIOCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A connected pair of Unix stream sockets: how a listener that is not one TCP connection per stream (an HTTP
/// proxy's forwarded requests, a UDP flow) hands the tunnel an ordinary stream channel.
enum SocketPair {
    /// The two descriptors; the caller owns them until a channel takes each.
    static func make() throws -> (CInt, CInt) {
        var descriptors: [CInt] = [-1, -1]
        #if canImport(Glibc)
        let type = CInt(SOCK_STREAM.rawValue)
        #else
        let type = SOCK_STREAM
        #endif
        guard socketpair(AF_UNIX, type, 0, &descriptors) == 0 else { throw IOError(errnoCode: errno, reason: "socketpair") }
        return (descriptors[0], descriptors[1])
    }

    /// Closes a descriptor that no channel took ownership of.
    static func close(_ descriptor: CInt) {
        #if canImport(Glibc)
        _ = Glibc.close(descriptor)
        #else
        _ = Darwin.close(descriptor)
        #endif
    }
}
