import CulvertCore
import CulvertTransport
import Logging
import NIOCore
import NIOPosix

/// The client end of the tunnel: connects one session to the server over the chosen transport and carries every
/// connection accepted on its local forwards as a stream of that session.
public final class TunnelClient: Sendable {
    public struct Configuration: Sendable {
        public var server: ServerEndpoint
        public var transport: TransportKind
        public var transportOptions: TransportOptions
        public var session: SessionConfiguration
        public var forwards: [ForwardSpec]

        public init(
            server: ServerEndpoint,
            transport: TransportKind = .websocket,
            transportOptions: TransportOptions = TransportOptions(),
            session: SessionConfiguration,
            forwards: [ForwardSpec]
        ) {
            self.server = server
            self.transport = transport
            self.transportOptions = transportOptions
            self.session = session
            self.forwards = forwards
        }
    }

    /// The session that carries the streams.
    public let session: TunnelSession
    private let listeners: [any Channel]
    /// The local address of each forward, in the order of ``Configuration/forwards``.
    public let listenerAddresses: [SocketAddress]

    private init(session: TunnelSession, listeners: [any Channel]) {
        self.session = session
        self.listeners = listeners
        self.listenerAddresses = listeners.compactMap { $0.localAddress }
    }

    /// Connects, completes the session handshake, then opens the local listeners.
    /// - Throws: ``SessionError`` (unreachable server, wrong token, …) or ``ForwardingError`` (a port in use).
    public static func connect(
        configuration: Configuration,
        group: any EventLoopGroup,
        logger: Logger
    ) async throws -> TunnelClient {
        let eventLoop = group.next()
        let dialer = ClientTransports.make(configuration.transport, options: configuration.transportOptions)
        let connection: any TransportConnection
        do {
            connection = try await dialer.connect(to: configuration.server, on: eventLoop).get()
        } catch let error as TransportError {
            throw SessionError.transport(error)
        }
        var sessionLogger = logger
        sessionLogger[metadataKey: "server"] = "\(configuration.server.hostHeader)"
        let finalLogger = sessionLogger
        let session = try await eventLoop.submit {
            let session = TunnelSession(
                role: .client,
                transport: connection,
                configuration: configuration.session,
                logger: finalLogger
            )
            session.start()
            return session
        }.get()
        _ = try await session.established.get()
        logger.info("tunnel established to \(configuration.server) over \(configuration.transport)")

        var listeners: [any Channel] = []
        do {
            for forward in configuration.forwards {
                listeners.append(try await Self.listen(forward, session: session, group: group, logger: logger))
            }
        } catch {
            for listener in listeners { try? await listener.close() }
            _ = try? await session.shutdown(gracePeriod: .zero).get()
            throw error
        }
        return TunnelClient(session: session, listeners: listeners)
    }

    private static func listen(
        _ forward: ForwardSpec,
        session: TunnelSession,
        group: any EventLoopGroup,
        logger: Logger
    ) async throws -> any Channel {
        let target = forward.target
        do {
            let channel = try await ServerBootstrap(group: group, childGroup: session.eventLoop)
                .serverChannelOption(.backlog, value: 256)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
                .childChannelOption(.autoRead, value: false)
                .childChannelOption(.allowRemoteHalfClosure, value: true)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let handler = StreamChannelHandler(session: session, streamID: nil)
                        try channel.pipeline.syncOperations.addHandler(handler)
                        guard session.openStream(channel: channel, handler: handler, target: target) else {
                            throw SessionError.shutdown
                        }
                    }
                }
                .bind(host: forward.bindHost, port: forward.bindPort)
                .get()
            logger.info("forwarding \(channel.localAddress.map { "\($0)" } ?? forward.bindHost) -> \(target)")
            return channel
        } catch {
            let bind = forward.bindHost.contains(":") ? "[\(forward.bindHost)]" : forward.bindHost
            throw ForwardingError.bindFailed(address: "\(bind):\(forward.bindPort)", reason: describeBindError(error))
        }
    }

    /// Succeeds with the reason once the session has ended.
    public var ended: EventLoopFuture<SessionError> { self.session.ended }

    /// Closes the local listeners, lets open streams finish for up to `gracePeriod`, then ends the session.
    public func shutdown(gracePeriod: TimeAmount = .seconds(5)) async {
        for listener in self.listeners { try? await listener.close() }
        _ = try? await self.session.shutdown(gracePeriod: gracePeriod).get()
    }
}
