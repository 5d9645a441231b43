import CulvertCore
import CulvertTransport
import NIOCore
import NIOPosix

/// Connects peer-opened streams to their targets on the server side, after checking the allowlist.
struct TargetConnector: Sendable {
    var allowlist: Allowlist
    var connectTimeout: TimeAmount

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
