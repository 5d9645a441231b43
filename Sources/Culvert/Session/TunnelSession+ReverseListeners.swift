import CulvertCore
import NIOCore

/// A server session carries its reverse listeners' connections as streams to the client, as a client does its
/// listeners'. Their channels live on the session's loop, where `carry` is called.
extension SessionHandle: StreamOpening {
    func carry(_ channel: any Channel, to target: TargetAddress, completion: @escaping (StreamOpenResult) -> Void) {
        self.session.carry(channel, to: target, completion: completion)
    }
}

extension TunnelSession {
    /// Server: whether this session's reverse listeners may go to a new session that asks for their ports: it is
    /// detached (its client went away) or ending. A live session keeps them.
    var releasesReverseListeners: Bool {
        self.isDetached || !self.acceptsNewStreamsNow
    }

    /// Client: asks the server to listen on `address` for `-R` (LISTEN, a reliable frame: a resumption replays it if
    /// the connection dropped first). The answer comes to ``onListenAnswered``.
    func requestListen(_ requestID: UInt32, on address: TargetAddress) {
        self.eventLoop.preconditionInEventLoop()
        self.enqueue(.listen(requestID: requestID, address: address))
    }

    /// Server: answers the client's LISTEN `requestID` with the bound port or the reason it was refused.
    func answerListen(_ requestID: UInt32, _ result: Result<Int, StreamOpenFailure>) {
        self.eventLoop.preconditionInEventLoop()
        switch result {
        case .success(let port):
            self.enqueue(.listenOK(requestID: requestID, port: UInt16(truncatingIfNeeded: port)))
        case .failure(let failure):
            self.enqueue(.listenFail(requestID: requestID, reason: failure.reason, message: failure.message))
        }
    }
}
