import CulvertCore
import CulvertTransport
import Logging
import NIOCore
import NIOPosix

/// The `-L [BIND:]PORT:HOST:HOSTPORT` listener (wstunnel's "listener"): accepts TCP connections on a local port and
/// carries each as a stream to one fixed target. Nothing needs answering before the bytes flow, so the outcome of
/// the opening only goes to the log (the session says why a target was refused).
enum LocalPortListener {
    /// Binds `forward`; accepted connections live on `streamLoop` (the loop of the sessions that carry them).
    static func bind(
        _ forward: ForwardSpec,
        group: any EventLoopGroup,
        streamLoop: any EventLoop,
        tunnel: any StreamOpening,
        logger: Logger
    ) async throws -> any Channel {
        let target = forward.target
        do {
            let channel = try await ServerBootstrap(group: group, childGroup: streamLoop)
                .serverChannelOption(.backlog, value: 256)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
                .childChannelOption(.autoRead, value: false)
                .childChannelOption(.allowRemoteHalfClosure, value: true)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        tunnel.carry(channel, to: target) { result in
                            if case .unavailable(let reason) = result {
                                logger.debug("local connection for \(target) not carried: \(reason)")
                            }
                        }
                    }
                }
                .bind(host: forward.bindHost, port: forward.bindPort)
                .get()
            logger.info("forwarding \(channel.localAddress.map(\.displayText) ?? forward.bindHost) -> \(target)")
            return channel
        } catch {
            let bind = forward.bindHost.contains(":") ? "[\(forward.bindHost)]" : forward.bindHost
            throw ForwardingError.bindFailed(address: "\(bind):\(forward.bindPort)", reason: describeBindError(error))
        }
    }
}
