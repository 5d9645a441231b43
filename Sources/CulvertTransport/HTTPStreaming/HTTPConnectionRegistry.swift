import NIOConcurrencyHelpers
import NIOCore

/// The server's chunked and polling connections by id. Ids are 128 random bits in hex, issued by the server, so
/// that a request can name its connection but nobody can guess one.
final class HTTPConnectionRegistry: Sendable {
    private let connections = NIOLockedValueBox<[String: HTTPServerConnectionHandle]>([:])
    let settings: HTTPTransportServerSettings
    /// The loop of the session a placement tag names (see ``TransportServer/Configuration/placement``).
    let placement: (@Sendable (String) -> (any EventLoop)?)?
    /// Told after a connection is forgotten.
    let onForget: (@Sendable () -> Void)?

    init(
        settings: HTTPTransportServerSettings, placement: (@Sendable (String) -> (any EventLoop)?)? = nil,
        onForget: (@Sendable () -> Void)? = nil
    ) {
        self.settings = settings
        self.placement = placement
        self.onForget = onForget
    }

    var count: Int { self.connections.withLockedValue { $0.count } }

    /// Creates a connection on `eventLoop` (call there) and registers its handle; it unregisters itself when it closes.
    func create(kind: TransportKind, eventLoop: any EventLoop, peerDescription: String, peerAddress: SocketAddress?) -> HTTPServerTransportConnection {
        var generator = SystemRandomNumberGenerator()
        let id = (0..<2).map { _ in
            let hex = String(generator.next() as UInt64, radix: 16)
            return String(repeating: "0", count: 16 - hex.count) + hex
        }.joined()
        let connection = HTTPServerTransportConnection(
            id: id, kind: kind, eventLoop: eventLoop, peerDescription: peerDescription, peerAddress: peerAddress,
            settings: self.settings
        )
        connection.onClose = { [weak self] in
            _ = self?.connections.withLockedValue { $0.removeValue(forKey: id) }
            self?.onForget?()
        }
        self.connections.withLockedValue { $0[id] = HTTPServerConnectionHandle(connection) }
        return connection
    }

    /// The handle of the connection named `id`, if it is known.
    func connection(id: String) -> HTTPServerConnectionHandle? {
        self.connections.withLockedValue { $0[id] }
    }
}
