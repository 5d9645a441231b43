public import Logging
public import NIOCore

/// Options every transport dialer takes.
public struct TransportOptions: Sendable {
    /// The header on every request of a transport connection that resumes a session: a draining server lets those
    /// through (and refuses a HELLO on them that starts a new session), so a session whose connection dropped
    /// while its streams finish comes back to finish them.
    public static let resumptionHeaderName = CulvertRequestField.resume.headerName
    /// The header on the `open` of a chunked or polling connection that resumes a session: its placement tag, so
    /// that the server makes the connection on the loop of that session (see ``placement``).
    public static let placementHeaderName = CulvertRequestField.placement.headerName

    /// Extra headers on every HTTP request (e.g. for a reverse proxy's routing or auth).
    public var extraHeaders: [(String, String)]
    /// Time allowed for TCP connect plus the transport's own handshake.
    public var connectTimeout: TimeAmount
    /// Largest transport message accepted, in bytes.
    public var maximumMessageSize: Int
    /// The forward proxy to go through, or nil for a direct connection.
    public var proxy: ProxyConfiguration?
    /// Limits and timers of the chunked and polling transports.
    public var http: HTTPTransportClientSettings
    /// How an `https` server's certificate is checked (nil: against the system's trust roots).
    public var tls: ClientTLS?
    /// The local address to connect from, on a machine with several (nil: the system picks).
    public var sourceAddress: SocketAddress?
    /// Where transports log what they decide (e.g. a switch to short POSTs).
    public var logger: Logger
    /// The session's cookies (what a load balancer set, and the affinity id), sent on every request and kept from
    /// every response; nil: no cookies (a probe, a benchmark).
    public var cookies: SessionCookieJar?
    /// The session's chunked and polling connections start where an earlier one settled after the path refused its
    /// bodies; nil: each connection starts at the first shape.
    public var bodyShapeMemory: BodyShapeMemory?
    /// The placement tag of the session this connection resumes (derived from its id, not the id itself), sent on
    /// a chunked or polling `open`; nil: a new session's connection, or another transport.
    public var placement: String?

    public init(
        extraHeaders: [(String, String)] = [],
        connectTimeout: TimeAmount = .seconds(10),
        maximumMessageSize: Int = 16 * 1024 * 1024,
        proxy: ProxyConfiguration? = nil,
        http: HTTPTransportClientSettings = .init(),
        tls: ClientTLS? = nil,
        logger: Logger = Logger(label: "culvert.transport", factory: { _ in SwiftLogNoOpLogHandler() })
    ) {
        self.tls = tls
        self.extraHeaders = extraHeaders
        self.connectTimeout = connectTimeout
        self.maximumMessageSize = maximumMessageSize
        self.proxy = proxy
        self.http = http
        self.logger = logger
    }
}

/// The client side of a transport: dials the server and completes the transport's handshake.
public protocol ClientTransport: Sendable {
    var kind: TransportKind { get }
    /// Connects to `endpoint`; the connection's event loop is `eventLoop`.
    func connect(to endpoint: ServerEndpoint, on eventLoop: any EventLoop) -> EventLoopFuture<any TransportConnection>
}

extension ClientTransport {
    /// ``connect(to:on:)``, the connection boxed for code that waits for it off its loop (an async task) and hands
    /// it back there: a connection is confined to its loop and not `Sendable`; the box is, and opens only on that loop.
    public func connectBound(to endpoint: ServerEndpoint, on eventLoop: any EventLoop) -> EventLoopFuture<NIOLoopBound<any TransportConnection>> {
        let bound = eventLoop.makePromise(of: NIOLoopBound<any TransportConnection>.self)
        // Boxed where the connection lives: the dial runs on its loop, and its result is read there.
        eventLoop.execute {
            self.connect(to: endpoint, on: eventLoop).assumeIsolated().whenComplete { result in
                bound.completeWith(result.map { NIOLoopBound($0, eventLoop: $0.eventLoop) })
            }
        }
        return bound.futureResult
    }
}

/// The dialer for each transport kind.
public enum ClientTransports {
    /// The dialer for `kind`.
    public static func make(_ kind: TransportKind, options: TransportOptions) -> any ClientTransport {
        switch kind {
        case .websocket: WebSocketClientTransport(options: options)
        case .connect: ConnectClientTransport(options: options)
        case .chunked, .polling: HTTPClientTransport(kind: kind, options: options)
        }
    }
}
