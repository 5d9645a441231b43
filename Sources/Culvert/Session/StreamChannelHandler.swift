import CulvertCore
import NIOCore

/// Sits on each local (client) or target (server) socket and reports what happens on it to the session.
///
/// The socket runs with auto-read off: the session calls `read()` only while the stream has credit, so a stream
/// whose peer does not read simply stops being read here, without affecting other streams.
final class StreamChannelHandler: ChannelDuplexHandler, @unchecked Sendable {
    // @unchecked: used only on the session's event loop.
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer

    private weak var session: TunnelSession?
    var streamID: StreamID?
    private var failed = false

    init(session: TunnelSession, streamID: StreamID?) {
        self.session = session
        self.streamID = streamID
    }

    /// A read requested before the channel was registered is lost, and OPEN_OK can beat the registration of an
    /// accepted channel: so ask again once the channel is active.
    func channelActive(context: ChannelHandlerContext) {
        if let id = self.streamID { self.session?.localReadComplete(id) }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let id = self.streamID else { return }
        self.session?.localRead(id, self.unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        guard let id = self.streamID else { return }
        self.session?.localReadComplete(id)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event, let id = self.streamID {
            self.session?.localInputClosed(id)
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// Lets a read through only while the stream may take more bytes, whoever asked for it: auto-read is off,
    /// but this gate keeps a stream that has no credit (or is still opening) from buffering anything.
    func read(context: ChannelHandlerContext) {
        guard let id = self.streamID, let session = self.session, session.mayReadLocally(id) else { return }
        context.read()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let id = self.streamID { self.session?.localClosed(id, afterError: self.failed) }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.failed = true
        context.close(promise: nil)
    }
}
