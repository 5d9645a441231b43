import CulvertCore
import CulvertTransport
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Connects peer-opened streams to their TCP targets on the server side, after checking the allowlist; never to the
/// server's own listener (a stream into the tunnel itself would loop).
struct TargetConnector: StreamConnector {
    var allowlist: Allowlist
    /// The server's reloadable rules: when set, each stream is checked against the allowlist they give `user` at
    /// the moment it opens, and `allowlist` is not used.
    var access: AccessControl?
    /// The named user whose rules apply (with `access`); nil for the shared token.
    var user: String?
    var connectTimeout: TimeAmount
    /// A UDP target's stream with no datagram either way for this long ends.
    var udpTimeout: TimeAmount = .seconds(30)
    /// The server's listening port, once bound (set once at start, read by every stream's connection).
    let listenPort = NIOLockedValueBox<Int?>(nil)

    /// Whether `channel`, connected to a target, reached this server's own listener: the target's address is this
    /// machine's (loopback, or the address the connection came from) and the port is the listener's.
    func reachesOwnListener(_ channel: any Channel) -> Bool {
        guard let port = self.listenPort.withLockedValue({ $0 }), let remote = channel.remoteAddress, remote.port == port,
            let remoteIP = remote.ipAddress
        else { return false }
        let isLoopback = remoteIP.hasPrefix("127.") || remoteIP == "::1" || remoteIP.hasPrefix("::ffff:127.")
        return isLoopback || remoteIP == channel.localAddress?.ipAddress
    }

    /// Whether `host` is a name or loopback address of the server's machine, as far as can be told without a lookup.
    static func namesThisMachine(_ host: String) -> Bool {
        let host = host.lowercased()
        return host == "localhost" || host.hasPrefix("127.") || host == "::1" || host == "0.0.0.0" || host == "::"
    }

    func connect(to target: TargetAddress, on eventLoop: any EventLoop, logger: Logger) -> EventLoopFuture<any Channel> {
        if target.port == self.listenPort.withLockedValue({ $0 }), Self.namesThisMachine(target.host) {
            logger.warning("refused stream to \(target): it is this server's own listener")
            return eventLoop.makeFailedFuture(StreamOpenFailure(.notAllowed, "\(target) is the culvert server itself"))
        }
        let allowlist = self.access?.rules.allowlist(for: self.user) ?? self.allowlist
        guard allowlist.permits(target) else {
            if let user = self.user {
                logger.warning("refused stream to \(target): not allowed for user \(user)")
                return eventLoop.makeFailedFuture(
                    StreamOpenFailure(.notAllowed, "\(target) is not allowed for user \(user) (the server's users file says where it may go)")
                )
            }
            logger.warning("refused stream to \(target): not in the server's --allow list")
            if target.port == self.listenPort.withLockedValue({ $0 }) {
                // Allowing it would not help if it is this server (a stream into the tunnel itself is refused).
                return eventLoop.makeFailedFuture(
                    StreamOpenFailure(.notAllowed, "\(target) is not allowed by the server (its port is the culvert server's own)")
                )
            }
            return eventLoop.makeFailedFuture(
                StreamOpenFailure(.notAllowed, "\(target) is not allowed by the server (add --allow \(target) to culvert server)")
            )
        }
        if target.transport == .udp { return self.connectDatagrams(to: target, on: eventLoop, logger: logger) }
        return ClientBootstrap(group: eventLoop)
            .connectTimeout(self.connectTimeout)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelOption(.autoRead, value: false)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .connect(host: target.host, port: target.port)
            .flatMapErrorThrowing { error in
                let reason = TransportDialer.describe(error)
                let code: OpenFailReason =
                    switch reason {
                    case "connection refused": .connectionRefused
                    case "host not found": .unresolvable
                    case "connection timed out": .timedOut
                    default: .other
                    }
                logger.info("cannot connect to \(target): \(reason)")
                throw StreamOpenFailure(code, "cannot connect to \(target): \(reason)")
            }
            .flatMapThrowing { channel in
                guard !self.reachesOwnListener(channel) else {
                    channel.close(promise: nil)
                    logger.warning("refused stream to \(target): it is this server's own listener")
                    throw StreamOpenFailure(.notAllowed, "\(target) is the culvert server itself")
                }
                return channel
            }
    }
}
