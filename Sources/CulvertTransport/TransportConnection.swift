public import NIOCore

/// One established transport connection: it moves opaque byte messages, in order, between client and server.
///
/// The session above it treats the messages as one byte stream, so a transport may split or join messages as
/// suits it. Implementations are confined to ``eventLoop``: every method must be called on it, and every delegate
/// callback arrives on it.
public protocol TransportConnection: AnyObject {
    /// The loop this connection lives on.
    var eventLoop: any EventLoop { get }
    /// Which transport carries it.
    var kind: TransportKind { get }
    /// The far end, for logs.
    var peerDescription: String { get }
    /// The far end's address on the server (the client, or the last proxy in front of it), for per-address limits;
    /// nil where there is none.
    var peerAddress: SocketAddress? { get }
    /// False while the transport's send buffer is full; the session stops producing until it turns true.
    var isWritable: Bool { get }
    /// Starts delivering inbound messages to `delegate` (messages that arrived before are delivered first).
    func start(delegate: any TransportConnectionDelegate)
    /// Sends one message and flushes it.
    func send(_ message: ByteBuffer)
    /// Sends one message made of `parts`, in this order, and flushes it. A transport over a socket writes the parts
    /// gathered (one `writev`) instead of copying them together; the default copies them into one message.
    func send(parts: [ByteBuffer])
    /// Closes the connection; the delegate then gets ``TransportConnectionDelegate/transportDidClose(_:error:)``.
    func close()
    /// The session above has authenticated its peer and holds `key`, a secret both ends derived and that never
    /// crossed the wire. Limits kept for unauthenticated peers are lifted, and a transport made of many HTTP
    /// requests signs (client) or requires (server) a MAC under a key derived from `key` on every later request, so
    /// that its connection id alone reads, writes and ends nothing.
    func sessionAuthenticated(key: [UInt8])
}

extension TransportConnection {
    public func sessionAuthenticated(key: [UInt8]) {}

    public func send(parts: [ByteBuffer]) {
        var message = ByteBufferAllocator().buffer(capacity: parts.reduce(0) { $0 + $1.readableBytes })
        for part in parts { message.writeImmutableBuffer(part) }
        self.send(message)
    }
    public var peerAddress: SocketAddress? { nil }
}

/// Receives what a ``TransportConnection`` reports, on its event loop.
public protocol TransportConnectionDelegate: AnyObject {
    func transport(_ transport: any TransportConnection, didReceive message: ByteBuffer)
    /// A batch of messages has been delivered: a good moment to flush what they caused.
    func transportDidReadComplete(_ transport: any TransportConnection)
    func transportWritabilityChanged(_ transport: any TransportConnection)
    /// The connection is gone; `error` says why if it was not a clean close.
    func transportDidClose(_ transport: any TransportConnection, error: (any Error)?)
}

/// A transport whose upstream may fall back from one streaming request body to short requests (the chunked
/// transport, when the path holds or cuts streaming bodies). Only that transport's business, so not part of
/// ``TransportConnection``: the probe and the tests ask for it by casting.
public protocol UpstreamModeReporting: AnyObject {
    /// Whether upstream bytes go as short requests now (read on the connection's loop).
    var upstreamUsesShortRequests: Bool { get }
    /// Called on the connection's loop when ``upstreamUsesShortRequests`` changes.
    var onUpstreamModeChange: (() -> Void)? { get set }
    /// The shape the connection's bodies have now (it moves on when the path refuses one).
    var bodyShape: HTTPBodyShape { get }
    /// The most bytes a body has on the wire, once the path refused bodies of every shape at their full size.
    var bodyByteLimit: Int? { get }
}

extension TransportConnection {
    /// Whether upstream bytes go as short requests because the path holds or cuts streaming request bodies; false
    /// for every transport that streams upstream (read on the connection's loop).
    public var upstreamUsesShortRequests: Bool { (self as? any UpstreamModeReporting)?.upstreamUsesShortRequests ?? false }

    /// The shape of the connection's bodies (chunked and polling); nil for transports that carry no HTTP bodies.
    public var bodyShape: HTTPBodyShape? { (self as? any UpstreamModeReporting)?.bodyShape }

    /// The most bytes a chunked or polling body has on the wire once the path refused larger ones; nil otherwise.
    public var bodyByteLimit: Int? { (self as? any UpstreamModeReporting)?.bodyByteLimit ?? nil }
}
