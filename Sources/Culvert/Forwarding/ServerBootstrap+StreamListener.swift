import NIOCore
import NIOPosix

extension ServerBootstrap {
    /// A listener whose accepted connections become streams, on `streamLoop` (their session's loop): auto-read off
    /// (a stream reads only with credit), remote half-closure allowed (half-closes are carried), no Nagle delay.
    static func streamListener(group: any EventLoopGroup, streamLoop: any EventLoop) -> ServerBootstrap {
        ServerBootstrap(group: group, childGroup: streamLoop)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.autoRead, value: false)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
    }
}
