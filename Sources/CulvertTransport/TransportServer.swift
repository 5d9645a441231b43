import NIOConcurrencyHelpers
public import NIOCore
import NIOHTTP1
import NIOSSL
import NIOPosix
import NIOWebSocket

/// The server side of every transport: one HTTP/1.1 listener that routes requests under a path prefix to the
/// transport they belong to, and hands each established connection to `onConnection`.
public final class TransportServer: Sendable {
    public struct Configuration: Sendable {
        public var host: String
        public var port: Int
        /// Requests outside this prefix get 404, so the port can sit behind a reverse proxy beside other sites.
        public var pathPrefix: String
        /// Largest transport message accepted, in bytes.
        public var maximumMessageSize: Int
        /// Hold times, idle timeout and response limits of the chunked and polling transports.
        public var http: HTTPTransportServerSettings
        /// When set, the listener serves HTTPS and WSS (every transport inside TLS) instead of plain HTTP.
        public var tls: ServerTLS?
        /// The loop of the session a chunked or polling `open` names in ``TransportOptions/placementHeaderName``
        /// (nil: not a session the server has). The connection is made there, so that the session it resumes
        /// adopts it without a hop between loops for every message.
        public var placement: (@Sendable (String) -> (any EventLoop)?)?
        /// Called when a chunked or polling connection is forgotten (``httpConnectionCount`` went down).
        public var onHTTPConnectionForgotten: (@Sendable () -> Void)?

        public init(host: String, port: Int, pathPrefix: String = ServerEndpoint.defaultPathPrefix,
                    maximumMessageSize: Int = 16 * 1024 * 1024, http: HTTPTransportServerSettings = .init(),
                    tls: ServerTLS? = nil) {
            self.tls = tls
            self.host = host
            self.port = port
            self.pathPrefix = pathPrefix
            self.maximumMessageSize = maximumMessageSize
            self.http = http
        }
    }

    private let channel: any Channel
    private let connectionCounter: NIOLockedValueBox<Int>
    private let registry: HTTPConnectionRegistry
    private let draining: DrainingRequestFilter.Gate

    /// Chunked and polling connections the server holds now.
    public var httpConnectionCount: Int { self.registry.count }

    /// The address the listener is bound to (useful with port 0).
    public var localAddress: SocketAddress? { self.channel.localAddress }

    /// TCP connections accepted so far.
    public var acceptedConnections: Int { self.connectionCounter.withLockedValue { $0 } }

    private init(
        channel: any Channel, connectionCounter: NIOLockedValueBox<Int>, registry: HTTPConnectionRegistry, draining: DrainingRequestFilter.Gate
    ) {
        self.draining = draining
        self.channel = channel
        self.connectionCounter = connectionCounter
        self.registry = registry
    }

    /// Binds the listener.
    /// - Parameter onConnection: called on the connection's event loop for every established transport connection.
    public static func bind(
        configuration: Configuration,
        group: any EventLoopGroup,
        onConnection: @escaping @Sendable (any TransportConnection) -> Void
    ) -> EventLoopFuture<TransportServer> {
        let counter = NIOLockedValueBox(0)
        let registry = HTTPConnectionRegistry(
            settings: configuration.http, placement: configuration.placement, onForget: configuration.onHTTPConnectionForgotten
        )
        let draining = DrainingRequestFilter.Gate(pathPrefix: configuration.pathPrefix)
        return ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelInitializer { channel in
                counter.withLockedValue { $0 += 1 }
                return channel.eventLoop.makeCompletedFuture {
                    try Self.configureConnection(
                        channel, configuration: configuration, registry: registry, draining: draining, onConnection: onConnection
                    )
                }
            }
            .bind(host: configuration.host, port: configuration.port)
            .map { TransportServer(channel: $0, connectionCounter: counter, registry: registry, draining: draining) }
    }

    /// Sets up an accepted connection's pipeline: TLS when configured, the HTTP codec with its limits, the upgraders
    /// (WebSocket, `culvert` for CONNECT) and the request handler of the chunked and polling transports.
    static func configureConnection(
        _ channel: any Channel,
        configuration: Configuration,
        registry: HTTPConnectionRegistry,
        draining: DrainingRequestFilter.Gate? = nil,
        onConnection: @escaping @Sendable (any TransportConnection) -> Void
    ) throws {
        let prefix = configuration.pathPrefix
        if let tls = configuration.tls {
            try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls.context))
        }
        // A peer that does not read what it is sent (404s to pipelined requests, pongs to a ping flood) stops being
        // read until it does, so what waits for it stays within the channel's write buffer.
        try channel.pipeline.syncOperations.addHandler(BackPressureHandler())
        let webSocket = WebSocketServerUpgrader(
            path: prefix + "/ws",
            maximumFrameSize: configuration.maximumMessageSize,
            onConnection: onConnection
        )
        let rawStream = RawStreamServerUpgrader(path: prefix + "/raw", onConnection: onConnection)
        // NIO's configureHTTPServerPipeline, spelled out so that the upgrade handler can be put back
        // after each request: NIO's looks at a connection's first request only, but proxies reuse
        // keep-alive connections for upgrades (squid does).
        let encoder = HTTPResponseEncoder()
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderFieldSize = configuration.http.maximumHeaderBytes
        limits.maxHeaderListSize = configuration.http.maximumHeaderBytes
        limits.maxHeaderFieldCount = configuration.http.maximumHeaderCount
        let httpHandlers: [any RemovableChannelHandler] = [
            ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes, limitConfiguration: limits)),
            HTTPServerPipelineHandler(),
            NIOHTTPResponseHeadersValidator(),
            HTTPServerProtocolErrorHandler(),
            HTTPConnectionCloseHandler(),
            HTTPRequestHeadTimeoutHandler(
                firstHead: configuration.http.requestHeadTimeout, betweenRequests: configuration.http.idleTimeout
            ),
            DrainingRequestFilter(gate: draining ?? DrainingRequestFilter.Gate(pathPrefix: prefix)),
        ]
        let makeUpgradeHandler = {
            HTTPServerUpgradeHandler(
                upgraders: [webSocket, rawStream], httpEncoder: encoder, extraHTTPHandlers: httpHandlers,
                upgradeCompletionHandler: { _ in }
            )
        }
        let requestHandler = HTTPTransportRequestHandler(
            pathPrefix: prefix,
            registry: registry,
            maximumRecordPayload: configuration.maximumMessageSize,
            maximumPendingRequests: configuration.http.maximumPendingRequests,
            settings: configuration.http,
            onConnection: onConnection
        )
        // (The request handler comes from the context, not captured: it holds this closure.)
        requestHandler.rearmUpgrade = { context in
            let pipeline = context.pipeline.syncOperations
            guard (try? pipeline.handler(type: HTTPServerUpgradeHandler.self)) == nil else { return }
            try? pipeline.addHandler(makeUpgradeHandler(), position: .before(context.handler))
        }
        try channel.pipeline.syncOperations.addHandlers(
            [encoder] + httpHandlers + [makeUpgradeHandler(), requestHandler] as [any ChannelHandler]
        )
    }

    /// The server's connection pipeline on `channel` (an `EmbeddedChannel` in the fuzzers), with a registry of its
    /// own; established transport connections go to `onConnection`.
    @_spi(Fuzzing)
    public static func configureConnectionForFuzzing(
        _ channel: any Channel,
        configuration: Configuration,
        onConnection: @escaping @Sendable (any TransportConnection) -> Void
    ) throws {
        try Self.configureConnection(
            channel, configuration: configuration, registry: HTTPConnectionRegistry(settings: configuration.http),
            onConnection: onConnection
        )
    }

    /// Stops accepting connections (established ones are left to their sessions).
    public func close() -> EventLoopFuture<Void> {
        self.channel.close()
    }

    /// Keeps listening for the requests of the chunked and polling connections the server has, and answers every
    /// request that would start a new session with 503 (``DrainingRequestFilter``); ``close()`` ends it.
    public func startDraining() {
        self.draining.startDraining()
    }

    /// Whether ``startDraining()`` was called.
    public var isDraining: Bool { self.draining.isDraining }
}
