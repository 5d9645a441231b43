import NIOCore

/// Options every transport dialer takes.
public struct TransportOptions: Sendable {
    /// Extra headers on every HTTP request (e.g. for a reverse proxy's routing or auth).
    public var extraHeaders: [(String, String)]
    /// Time allowed for TCP connect plus the transport's own handshake.
    public var connectTimeout: TimeAmount
    /// Largest transport message accepted, in bytes.
    public var maximumMessageSize: Int

    public init(
        extraHeaders: [(String, String)] = [],
        connectTimeout: TimeAmount = .seconds(10),
        maximumMessageSize: Int = 16 * 1024 * 1024
    ) {
        self.extraHeaders = extraHeaders
        self.connectTimeout = connectTimeout
        self.maximumMessageSize = maximumMessageSize
    }
}

/// The client side of a transport: dials the server and completes the transport's handshake.
public protocol ClientTransport: Sendable {
    var kind: TransportKind { get }
    /// Connects to `endpoint`; the connection's event loop is `eventLoop`.
    func connect(to endpoint: ServerEndpoint, on eventLoop: any EventLoop) -> EventLoopFuture<any TransportConnection>
}

/// The dialer for each transport kind.
public enum ClientTransports {
    /// The dialer for `kind`, or ``TransportError/notImplemented(_:)``.
    public static func make(_ kind: TransportKind, options: TransportOptions) throws(TransportError) -> any ClientTransport {
        switch kind {
        case .websocket: return WebSocketClientTransport(options: options)
        case .connect, .chunked, .polling: throw .notImplemented(kind)
        }
    }
}
