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
    /// What each accepted connection is set up with: on its own loop, with auto-read off and remote half-closure
    /// allowed. It must hand the connection to the tunnel once it knows its target.
    let acceptConnection: @Sendable (_ channel: any Channel, _ tunnel: any StreamOpening, _ logger: Logger) throws -> Void
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
    }

    public var description: String { "\(self.flag) \(self.text)" }

    /// Binds the listener; accepted connections live on `streamLoop` (the loop of the sessions that carry them).
    /// - Throws: ``ForwardingError/bindFailed(address:reason:)`` (a port in use, an address not of this machine).
    func bind(group: any EventLoopGroup, streamLoop: any EventLoop, tunnel: any StreamOpening, logger: Logger) async throws -> any Channel {
        let accept = self.acceptConnection
        do {
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
