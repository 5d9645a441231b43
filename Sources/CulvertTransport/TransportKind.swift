/// The ways Culvert can carry a session over HTTP.
public enum TransportKind: String, CaseIterable, Hashable, Sendable, CustomStringConvertible {
    /// RFC 6455 WebSocket upgrade: one full-duplex connection, binary messages.
    case websocket
    /// HTTP CONNECT through a forward proxy, then the raw session bytes.
    case connect
    /// A long-lived chunked GET down and a chunked POST up.
    case chunked
    /// Long-polling GETs down and a POST per batch up: works through nearly anything.
    case polling

    public var description: String { self.rawValue }

    /// One line on what the transport is for, for `--help`.
    public var summary: String {
        switch self {
        case .websocket: "WebSocket upgrade: full duplex, lowest overhead; needs a path that passes Upgrade"
        case .connect: "HTTP CONNECT through a forward proxy, then raw bytes; fastest where CONNECT is allowed"
        case .chunked: "streaming chunked GET down and POST up; for proxies that strip Upgrade"
        case .polling: "long-polling GET down and short POSTs up; gets through buffering proxies"
        }
    }
}
