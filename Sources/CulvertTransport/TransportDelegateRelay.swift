import NIOCore

/// What every ``TransportConnection`` owes its delegate, kept in one place: messages that arrive before
/// ``TransportConnection/start(delegate:)`` wait for it, and the close is reported exactly once, also when it
/// happened before the start. Confined to the connection's event loop, like the connection.
final class TransportDelegateRelay {
    private var delegate: (any TransportConnectionDelegate)?
    private var earlyMessages: [ByteBuffer] = []
    private var closeError: (any Error)?
    private(set) var isClosed = false
    private var closeReported = false

    /// Hands `delegate` what waited for it (and the close, if it came first).
    func start(_ delegate: any TransportConnectionDelegate, for connection: any TransportConnection) {
        self.delegate = delegate
        let early = self.earlyMessages
        self.earlyMessages = []
        for message in early { delegate.transport(connection, didReceive: message) }
        if !early.isEmpty { delegate.transportDidReadComplete(connection) }
        if self.isClosed { self.reportClose(for: connection) }
    }

    func deliver(_ message: ByteBuffer, from connection: any TransportConnection) {
        if let delegate = self.delegate {
            delegate.transport(connection, didReceive: message)
        } else {
            self.earlyMessages.append(message)
        }
    }

    func readComplete(from connection: any TransportConnection) {
        self.delegate?.transportDidReadComplete(connection)
    }

    func writabilityChanged(of connection: any TransportConnection) {
        self.delegate?.transportWritabilityChanged(connection)
    }

    /// Records that the connection closed (the first error given is the one reported); returns whether a
    /// started delegate is waiting to hear it, for ``reportClose(for:)``.
    @discardableResult
    func markClosed(error: (any Error)?) -> Bool {
        if !self.isClosed {
            self.isClosed = true
            self.closeError = error
        }
        self.earlyMessages = []
        return self.delegate != nil && !self.closeReported
    }

    /// Tells the delegate the connection closed, once.
    func reportClose(for connection: any TransportConnection) {
        guard self.isClosed, !self.closeReported, let delegate = self.delegate else { return }
        self.closeReported = true
        self.delegate = nil
        delegate.transportDidClose(connection, error: self.closeError)
    }
}
