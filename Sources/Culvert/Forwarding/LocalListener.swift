import CulvertCore
import CulvertTransport
import Logging
import NIOCore
import NIOPosix

/// One thing the client listens on and carries through the tunnel (wstunnel's "listener"): a `-L` port forward, a
/// SOCKS5 proxy (`-D`), an HTTP proxy (`-H`). Each kind is a static factory in its own file in Forwarding/; the
/// client binds them all the same way and knows nothing of what they speak to their own clients, and the session
/// only sees streams to targets.
public struct LocalListener: Sendable, CustomStringConvertible {
    /// The flag that asks for this kind on the command line (`-L`, `-D`, `-H`), for messages.
    public let flag: String
    /// The listener as its flag takes it (`8080:db.internal:5432`, `1080`), for messages.
    public let text: String
    /// Where it listens.
    public let address: ListenAddress
    /// Whether it listens for UDP datagrams (`-L …/udp`), not TCP connections: a port of each may be used apart.
    public let isDatagram: Bool
    /// What each accepted connection is set up with: on its own loop, with auto-read off and remote half-closure
    /// allowed. It must hand the connection to the tunnel once it knows its target. Nil for a listener that binds
    /// its own socket (``bindDatagrams``).
    let acceptConnection: (@Sendable (_ channel: any Channel, _ tunnel: any StreamOpening, _ logger: Logger) throws -> Void)?
    /// Binds a UDP listener whose flows become streams.
    let bindDatagrams: (@Sendable (_ streamLoop: any EventLoop, _ tunnel: any StreamOpening, _ logger: Logger) async throws -> any Channel)?
    /// What the log says once it listens, given the bound address ("forwarding 127.0.0.1:8080 -> db:5432").
    let announcement: @Sendable (_ boundAddress: String) -> String

    init(
        flag: String, text: String, address: ListenAddress, announcement: @escaping @Sendable (_ boundAddress: String) -> String,
        acceptConnection: @escaping @Sendable (_ channel: any Channel, _ tunnel: any StreamOpening, _ logger: Logger) throws -> Void
    ) {
        self.flag = flag
        self.text = text
        self.address = address
        self.announcement = announcement
        self.acceptConnection = acceptConnection
        self.isDatagram = false
        self.bindDatagrams = nil
    }

    /// A listener that binds a UDP socket itself (on the streams' loop) and carries its flows as streams.
    init(
        flag: String, text: String, address: ListenAddress, announcement: @escaping @Sendable (_ boundAddress: String) -> String,
        bindDatagrams: @escaping @Sendable (_ streamLoop: any EventLoop, _ tunnel: any StreamOpening, _ logger: Logger) async throws -> any Channel
    ) {
        self.flag = flag
        self.text = text
        self.address = address
        self.announcement = announcement
        self.acceptConnection = nil
        self.isDatagram = true
        self.bindDatagrams = bindDatagrams
    }

    public var description: String { "\(self.flag) \(self.text)" }

    /// Binds the listener; accepted connections live on `streamLoop` (the loop of the sessions that carry them).
    /// - Throws: ``ForwardingError/bindFailed(address:reason:)`` (a port in use, an address not of this machine).
    func bind(group: any EventLoopGroup, streamLoop: any EventLoop, tunnel: any StreamOpening, logger: Logger) async throws -> any Channel {
        do {
            if let bindDatagrams = self.bindDatagrams {
                let channel = try await bindDatagrams(streamLoop, tunnel, logger)
                logger.info("\(self.announcement(channel.localAddress.map(\.displayText) ?? self.address.description))")
                return channel
            }
            let accept = self.acceptConnection!
            let channel = try await ServerBootstrap.streamListener(group: group, streamLoop: streamLoop)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture { try accept(channel, tunnel, logger) }
                }
                .bind(host: self.address.host, port: self.address.port)
                .get()
            logger.info("\(self.announcement(channel.localAddress.map(\.displayText) ?? self.address.description))")
            return channel
        } catch {
            throw ForwardingError.bindFailed(address: self.address.description, reason: describeBindError(error))
        }
    }
}
