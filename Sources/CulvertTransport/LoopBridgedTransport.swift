public import NIOCore

/// Presents a ``TransportConnection`` that lives on one event loop to a session on another: every call and every
/// delegate callback hops loops, in order. Used when a resumed session adopts a WebSocket or CONNECT connection
/// whose socket another loop than the session's took (NIO cannot move a channel between loops); a chunked or polling
/// connection that resumes a session is made on that session's loop instead (``TransportOptions/placement``).
public final class LoopBridgedTransport: TransportConnection, TransportConnectionDelegate, @unchecked Sendable {
    // @unchecked: the one type whose job is to cross loops. `relay` and `writable` are confined to `eventLoop` (the
    // session's); `inner` is boxed to its own loop, where every call to it runs.
    public let eventLoop: any EventLoop
    public let kind: TransportKind
    public let peerDescription: String
    public let peerAddress: SocketAddress?
    private let inner: NIOLoopBound<any TransportConnection>
    private let relay = TransportDelegateRelay()
    private var writable = true

    /// Bridges `inner` (on its own loop) to `eventLoop`. Call on `inner`'s loop: it becomes `inner`'s delegate at
    /// once, so that nothing `inner` receives from now on is lost.
    public init(_ inner: any TransportConnection, to eventLoop: any EventLoop) {
        inner.eventLoop.preconditionInEventLoop()
        self.inner = NIOLoopBound(inner, eventLoop: inner.eventLoop)
        self.peerAddress = inner.peerAddress
        self.eventLoop = eventLoop
        self.kind = inner.kind
        self.peerDescription = inner.peerDescription
        self.writable = inner.isWritable
        inner.start(delegate: self)
    }

    public var isWritable: Bool { self.writable }

    public func start(delegate: any TransportConnectionDelegate) {
        self.eventLoop.preconditionInEventLoop()
        self.relay.start(delegate, for: self)
    }

    public func send(_ message: ByteBuffer) {
        let inner = self.inner
        inner.eventLoop.execute { inner.value.send(message) }
    }

    public func send(parts: [ByteBuffer]) {
        let inner = self.inner
        inner.eventLoop.execute { inner.value.send(parts: parts) }
    }

    public func close() {
        let inner = self.inner
        inner.eventLoop.execute { inner.value.close() }
    }

    public func sessionAuthenticated(key: [UInt8]) {
        let inner = self.inner
        inner.eventLoop.execute { inner.value.sessionAuthenticated(key: key) }
    }

    // MARK: TransportConnectionDelegate (on inner's loop)

    public func transport(_ transport: any TransportConnection, didReceive message: ByteBuffer) {
        self.eventLoop.execute { self.relay.deliver(message, from: self) }
    }

    public func transportDidReadComplete(_ transport: any TransportConnection) {
        self.eventLoop.execute { self.relay.readComplete(from: self) }
    }

    public func transportWritabilityChanged(_ transport: any TransportConnection) {
        let writable = transport.isWritable
        self.eventLoop.execute {
            self.writable = writable
            self.relay.writabilityChanged(of: self)
        }
    }

    public func transportDidClose(_ transport: any TransportConnection, error: (any Error)?) {
        let error = error.map { BridgedError(description: "\($0)") }
        self.eventLoop.execute {
            self.relay.markClosed(error: error)
            self.relay.reportClose(for: self)
        }
    }
}

/// An error carried across loops as what it says (a close's error is only ever read for its description).
private struct BridgedError: Error, Sendable, CustomStringConvertible {
    let description: String
}
