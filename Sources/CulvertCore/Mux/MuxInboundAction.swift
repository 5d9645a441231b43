public import NIOCore

/// What the driver does after the multiplexer handled a received stream frame.
public enum MuxInboundAction: Hashable, Sendable {
    /// The peer asks for `target`: connect, then call ``MuxStateMachine/acceptSucceeded(_:)`` or
    /// ``MuxStateMachine/acceptFailed(_:reason:message:)``.
    case openRequested(StreamID, TargetAddress)
    /// The stream this side opened is connected; start reading the local socket.
    case opened(StreamID)
    /// The stream this side opened was refused; close the local socket.
    case openFailed(StreamID, OpenFailReason, String)
    /// Write this payload to the stream's local socket, then report ``MuxStateMachine/consumed(_:bytes:)``.
    case deliver(StreamID, DataFlags, ByteBuffer)
    /// The stream has new send credit: resume reading its local socket.
    case creditAvailable(StreamID)
    /// The peer half-closed: shut the local socket's output once pending writes are done. `streamComplete` says
    /// the stream has also finished in the other direction and is gone from the multiplexer.
    case remoteFinished(StreamID, streamComplete: Bool)
    /// The peer aborted the stream: close the local socket.
    case reset(StreamID, ResetCode, String)
    /// Send `frame` to the peer; when `closeStream` is set, that stream is gone and its local socket must close.
    case reply(Frame, closeStream: StreamID?, reason: String)
    /// Nothing to do (e.g. data still in flight for a stream that was just reset).
    case ignore(reason: String)
    /// The peer broke the protocol: end the session with GOAWAY.
    case sessionError(GoAwayCode, String)
}
