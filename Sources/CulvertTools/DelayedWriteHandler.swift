import NIOCore

/// Holds every write, flush and close for a fixed delay before passing it on, in order: the added latency of a
/// slow proxy or a long path, for ``FaultProxy``.
final class DelayedWriteHandler: ChannelOutboundHandler {
    typealias OutboundIn = NIOAny
    typealias OutboundOut = NIOAny

    private enum Operation {
        case write(NIOAny, EventLoopPromise<Void>?)
        case flush
        case close(CloseMode, EventLoopPromise<Void>?)
    }

    private let delay: TimeAmount
    private var queue: [(due: NIODeadline, operation: Operation)] = []
    private var queueHead = 0
    private var drainScheduled = false

    init(delay: TimeAmount) {
        self.delay = delay
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        self.enqueue(.write(data, promise), context: context)
    }

    func flush(context: ChannelHandlerContext) {
        self.enqueue(.flush, context: context)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        // A close that the channel itself must do at once (its peer is gone) is not delayed past the data before it.
        self.enqueue(.close(mode, promise), context: context)
    }

    private func enqueue(_ operation: Operation, context: ChannelHandlerContext) {
        self.queue.append((.now() + self.delay, operation))
        self.scheduleDrain(context: context)
    }

    private func scheduleDrain(context: ChannelHandlerContext) {
        guard !self.drainScheduled, self.queueHead < self.queue.count else { return }
        self.drainScheduled = true
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.eventLoop.assumeIsolated().scheduleTask(deadline: self.queue[self.queueHead].due) { [self] in
            self.drainScheduled = false
            self.drain(context: loopBound.value)
        }
    }

    private func drain(context: ChannelHandlerContext) {
        let now = NIODeadline.now()
        while self.queueHead < self.queue.count, self.queue[self.queueHead].due <= now {
            let operation = self.queue[self.queueHead].operation
            self.queueHead += 1
            switch operation {
            case .write(let data, let promise): context.write(data, promise: promise)
            case .flush: context.flush()
            case .close(let mode, let promise): context.close(mode: mode, promise: promise)
            }
        }
        if self.queueHead == self.queue.count {
            self.queue.removeAll(keepingCapacity: true)
            self.queueHead = 0
        }
        self.scheduleDrain(context: context)
    }
}
