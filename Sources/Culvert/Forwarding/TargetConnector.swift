import CulvertCore
import CulvertTransport
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Connects peer-opened streams to their targets on the server side, after checking the allowlist; never to the
/// server's own listener (a stream into the tunnel itself would loop).
struct TargetConnector: Sendable {
    var allowlist: Allowlist
    var connectTimeout: TimeAmount
    /// The server's listening port, once bound.
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

    func open(session: TunnelSession, id: StreamID, target: TargetAddress) {
        guard self.allowlist.permits(target) else {
            session.logger.warning("refused stream to \(target): not in the server's --allow list")
            session.targetFailed(
                id,
                reason: .notAllowed,
                message: "\(target) is not allowed by the server (add --allow \(target) to culvert server)"
            )
            return
        }
        ClientBootstrap(group: session.eventLoop)
            .connectTimeout(self.connectTimeout)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelOption(.autoRead, value: false)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(StreamChannelHandler(session: session, streamID: id))
                }
            }
            .connect(host: target.host, port: target.port)
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    if self.reachesOwnListener(channel) {
                        channel.close(promise: nil)
                        session.logger.warning("refused stream to \(target): it is this server's own listener")
                        session.targetFailed(id, reason: .notAllowed, message: "\(target) is the culvert server itself")
                        return
                    }
                    session.targetConnected(id, channel: channel, target: target)
                case .failure(let error):
                    let reason = TransportDialer.describe(error)
                    let code: OpenFailReason =
                        switch reason {
                        case "connection refused": .connectionRefused
                        case "host not found": .unresolvable
                        case "connection timed out": .timedOut
                        default: .other
                        }
                    session.logger.info("stream \(id): cannot connect to \(target): \(reason)")
                    session.targetFailed(id, reason: code, message: "cannot connect to \(target): \(reason)")
                }
            }
    }
}
