import NIOCore

/// Joins two channels so that each one's bytes are written to the other, with backpressure (a side reads only
/// while the other can write) and half-close passed through. Used by the test proxy.
final class ByteRelay: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = NIOAny
    typealias OutboundOut = NIOAny

    private var partner: ByteRelay?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    /// Bytes this side may still read before both connections are cut (nil: no limit).
    private var budget: Int?
    /// Called once when the budget runs out and both connections are cut.
    private var onCut: (() -> Void)?
    /// Read bytes are dropped, not passed on: a black hole (a lost NAT mapping) rather than a cut.
    private var blackHoled = false

    private init(budget: Int?) {
        self.budget = budget
    }

    /// Two joined handlers: add one to each channel's pipeline. After `cutAfter` bytes read by the second (from
    /// upstream), both connections are closed (a proxy that cuts long responses) and `onCut` is called.
    static func pair(cutAfter: Int? = nil, onCut: (() -> Void)? = nil) -> (ByteRelay, ByteRelay) {
        let first = ByteRelay(budget: nil)
        let second = ByteRelay(budget: cutAfter)
        second.onCut = onCut
        first.partner = second
        second.partner = first
        return (first, second)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        self.partner = nil
    }

    private func partnerWrite(_ data: NIOAny) {
        self.context?.write(data, promise: nil)
    }

    private func partnerFlush() {
        self.context?.flush()
    }

    private func partnerWriteEOF() {
        self.context?.close(mode: .output, promise: nil)
    }

    private func partnerCloseFull() {
        self.context?.close(promise: nil)
    }

    private func partnerBecameWritable() {
        if self.pendingRead {
            self.pendingRead = false
            self.context?.read()
        }
    }

    private var partnerWritable: Bool { self.context?.channel.isWritable ?? false }

    /// Bytes of an answer head seen so far, while waiting to black-hole both sides after it (`silenceAfterHead`).
    private var headScan: [UInt8]?

    /// From now on this side swallows what it reads (call on its loop; call on both handlers of a pair).
    func blackHole() {
        self.blackHoled = true
    }

    /// Passes on what it reads up to the end of the first HTTP head (`\r\n\r\n`), then both sides swallow
    /// everything: a proxy that relays an upgrade's 101 and nothing after it.
    func silenceAfterHead() {
        self.headScan = []
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if self.blackHoled { return }
        if var scanned = self.headScan {
            var bytes = self.unwrapInboundIn(data)
            let start = scanned.count
            scanned += bytes.readableBytesView
            if let end = scanned.firstRange(of: Array("\r\n\r\n".utf8))?.upperBound {
                self.partner?.partnerWrite(NIOAny(bytes.readSlice(length: end - start)!))
                self.partner?.partnerFlush()
                self.headScan = nil
                self.blackHole()
                self.partner?.blackHole()
            } else {
                self.headScan = scanned
                self.partner?.partnerWrite(data)
            }
            return
        }
        if let budget = self.budget {
            let bytes = self.unwrapInboundIn(data).readableBytes
            guard bytes < budget else {
                // Pass on part of it, then cut both connections.
                var part = self.unwrapInboundIn(data)
                if budget > 0 { self.partner?.partnerWrite(NIOAny(part.readSlice(length: budget)!)) }
                self.partner?.partnerFlush()
                self.budget = 0
                self.onCut?()
                self.onCut = nil
                self.partner?.partnerCloseFull()
                context.close(promise: nil)
                return
            }
            self.budget = budget - bytes
        }
        self.partner?.partnerWrite(data)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.partner?.partnerFlush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.partner?.partnerCloseFull()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, case .inputClosed = event {
            self.partner?.partnerWriteEOF()
        } else if event is IdleStateHandler.IdleStateEvent {
            // A proxy's idle timeout: nothing either way for too long.
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { self.partner?.partnerBecameWritable() }
    }

    func read(context: ChannelHandlerContext) {
        if let partner = self.partner, partner.partnerWritable {
            context.read()
        } else {
            self.pendingRead = true
        }
    }
}
