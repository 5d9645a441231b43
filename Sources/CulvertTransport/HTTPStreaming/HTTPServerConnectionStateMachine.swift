import NIOCore

/// The server end of a chunked or polling transport connection, as a pure state machine: the bytes the session sent
/// until the client acknowledges them, the one GET held to carry them (a streaming response written as they come, or
/// a poll answered as soon as there are any), the bytes arriving in POSTs, what an unsigned request may still get once
/// the session is authenticated, and the connection's end (idle, closed, or lingering with bytes not yet fetched).
///
/// It opens no sockets and reads no clock (the time comes with each request): ``HTTPServerTransportConnection`` feeds it
/// the requests (each GET numbered, so events of one that was replaced are ignored here) and carries out what it
/// returns, encoding records in the shape each request asked for.
struct HTTPServerConnectionStateMachine {
    enum DownMode: String {
        /// One long chunked response, written as data is produced.
        case stream
        /// A held GET answered as soon as there is data (or the hold time passes).
        case poll
    }

    /// The GET held to carry downstream bytes.
    struct Response: Equatable {
        let id: UInt64
        let mode: DownMode
        /// The shape the request asked for (`Accept`).
        let shape: HTTPBodyShape
        /// Payload bytes this response carries at most (a streaming one then ends, and the client asks again).
        let payloadLimit: Int
        /// Bytes its body may have on the wire when the client asked for small answers (`r=`).
        let wireLimit: Int
        /// Admitted before the session was authenticated (unsigned): ended once it is.
        let signed: Bool
        /// A streaming answer to an HTTP/1.0 request (nginx's default `proxy_http_version 1.0`, say) cannot be
        /// chunked: its body runs to the end of the connection.
        let closeDelimited: Bool
        /// Offset of the next byte to write on this response.
        var nextOffset: UInt64
        var payloadBytes = 0
        var wireBytes = 0
    }

    enum Lifecycle: Equatable {
        case open
        /// Closed with downstream bytes the client has not fetched (a GOAWAY, say): the id stays known so that the
        /// client's next GET still gets them and the close record.
        case lingering
        /// Closed and let go: the registry forgets the id.
        case forgotten
    }

    /// How a response ends.
    enum Ending: Equatable {
        /// A poll (no head sent yet): answer it whole with these records.
        case complete([HTTPTransportRecord])
        /// A streaming response: end its body, after a close record when `closeRecord`; close its TCP connection
        /// after when `closeConnection` (its body runs to the end of the connection).
        case endStream(closeRecord: Bool, closeConnection: Bool)
    }

    /// What to do about a GET that arrived.
    enum DownRequestAnswer: Equatable {
        /// Answer it whole with `records`; with `forget`, the connection (closed) is then forgotten.
        case complete([HTTPTransportRecord], forget: Bool)
        /// An unsigned GET after the session was authenticated, with nothing of the handshake left for it: 403.
        case forbidden
        /// The client acknowledged bytes never sent: close the connection with this violation.
        case violation(String)
        /// Hold it as the current response (after `replacing`: the end of the one it replaces, if any), then
        /// ``pump()``; a streaming one starts with its head and an ACK of `acknowledging`.
        case hold(Response, replacing: DownAction, acknowledging: UInt64)
    }

    /// What to do with the current response after bytes or events.
    enum DownAction: Equatable {
        case none
        /// Write what is unsent into the streaming response (``unsentPieces()``, ``wroteToResponse(wireBytes:payloadBytes:endingAt:)``,
        /// then ``streamWriteFinished(full:)``).
        case writeStream
        /// End `response` as `ending`; it is no longer the current one.
        case finish(Response, Ending)
    }

    /// What one record of a POST body means.
    enum RecordOutcome: Equatable {
        case none
        /// New upstream bytes to pass on.
        case deliver(ByteBuffer)
        /// An unsigned POST after the session was authenticated: the rest of it is not the client's; stop reading it.
        case stop
        /// The record breaks the protocol: close the connection (with a close record) with this reason.
        case violation(String)
        /// The client ends the connection.
        case close
    }

    private let settings: HTTPTransportServerSettings
    private(set) var lifecycle = Lifecycle.open
    private(set) var response: Response?
    private var lastResponse: UInt64 = 0
    /// The bytes the session sent, from the client's last acknowledgement on.
    private(set) var log = OutboundByteLog()
    /// The upstream bytes received in order.
    private(set) var cursor = InboundByteCursor()
    private(set) var isAuthenticated = false
    /// The downstream offset where the handshake ended: all an unsigned request may ever read.
    private var handshakeEnd: UInt64 = 0
    private var lastActivity: NIODeadline
    private var openUploads = 0
    /// The upstream offset last acknowledged on a streaming response.
    private var acknowledgementWritten: UInt64 = 0
    private var acknowledgementWriteScheduled = false

    init(settings: HTTPTransportServerSettings, now: NIODeadline) {
        self.settings = settings
        self.lastActivity = now
    }

    var isOpen: Bool { self.lifecycle == .open }

    /// Whether the session may send more: the bytes the client has not acknowledged are within the send window.
    var isWritable: Bool { self.log.unacknowledgedBytes < self.settings.sendWindowBytes }

    // MARK: Downstream

    /// The session sent `message`.
    mutating func send(_ message: ByteBuffer) -> DownAction {
        guard self.isOpen else { return .none }
        self.log.append(message)
        return self.pump()
    }

    /// A GET for downstream bytes arrived at `now`; `acknowledged` is what the client has received, `byteLimit` the
    /// body size it asked for at most (`r=`).
    mutating func downRequest(
        mode: DownMode, http10: Bool, acknowledged: UInt64, signed: Bool, shape: HTTPBodyShape, byteLimit: Int?, now: NIODeadline
    ) -> DownRequestAnswer {
        self.lastActivity = now
        guard self.isOpen else { return self.answerAfterClose(acknowledged: acknowledged, shape: shape) }
        guard signed || !self.isAuthenticated else {
            // The client's own when it asked before it had the key (the WELCOME was still on its way): it gets the
            // rest of the handshake, never a byte after it; anyone else, nothing.
            let start = max(acknowledged, self.log.acknowledged)
            guard start < self.handshakeEnd else { return .forbidden }
            let records = self.log.pieces(from: start, limit: Int(self.handshakeEnd - start)).map {
                HTTPTransportRecord.data(offset: $0.offset, payload: $0.bytes)
            }
            return .complete(records, forget: false)
        }
        if self.log.acknowledge(acknowledged) == .beyondProduced { return .violation("the client acknowledged bytes never sent") }
        // A newer request replaces an older one (the client gave up on it): the old one is answered empty.
        let replacing = self.response.map { DownAction.finish($0, self.finish($0)) } ?? .none
        let wireLimit = min(mode == .stream ? self.settings.streamResponseLimitBytes : self.settings.maximumPollResponseBytes, byteLimit ?? .max)
        self.lastResponse += 1
        let response = Response(
            id: self.lastResponse, mode: mode, shape: shape, payloadLimit: max(1, shape.recordBytes(inWireBytes: wireLimit) - 64),
            wireLimit: byteLimit ?? .max, signed: signed, closeDelimited: mode == .stream && http10, nextOffset: self.log.acknowledged
        )
        if mode == .stream { self.acknowledgementWritten = self.cursor.received }
        self.response = response
        return .hold(response, replacing: replacing, acknowledging: self.cursor.received)
    }

    /// What the current response does about the bytes unsent: a streaming one writes them, a poll is answered.
    mutating func pump() -> DownAction {
        guard self.isOpen, let response = self.response, response.nextOffset < self.log.produced else { return .none }
        switch response.mode {
        case .stream: return .writeStream
        case .poll: return .finish(response, self.finish(response))
        }
    }

    /// The unsent bytes the streaming response may still carry.
    func unsentPieces() -> [(offset: UInt64, bytes: ByteBuffer)] {
        guard let response = self.response else { return [] }
        return self.log.pieces(from: response.nextOffset, limit: response.payloadLimit - response.payloadBytes)
    }

    /// The streaming response's body on the wire so far.
    var responseWireBytes: Int { self.response?.wireBytes ?? 0 }

    /// A DATA record of `payloadBytes`, `wireBytes` long on the wire and ending just before `end`, went into the
    /// streaming response.
    mutating func wroteToResponse(wireBytes: Int, payloadBytes: Int, endingAt end: UInt64) {
        guard var response = self.response else { return }
        response.wireBytes += wireBytes
        response.payloadBytes += payloadBytes
        response.nextOffset = end
        self.response = response
    }

    /// A write into the streaming response is done (`full`: a piece did not fit under its wire limit): it ends at
    /// its limits, and the client asks again.
    mutating func streamWriteFinished(full: Bool) -> DownAction {
        guard let response = self.response, response.mode == .stream else { return .none }
        guard full || response.payloadBytes >= response.payloadLimit || response.wireBytes >= response.wireLimit else { return .none }
        return .finish(response, self.finish(response))
    }

    /// The current response's timer (a streaming one's maximum age, a poll's hold time) fired.
    mutating func responseTimerFired(_ id: UInt64) -> DownAction {
        guard let response = self.response, response.id == id else { return .none }
        return .finish(response, self.finish(response))
    }

    /// The TCP connection of GET `id` closed: nothing more is written to it.
    mutating func responseConnectionClosed(_ id: UInt64) -> Bool {
        guard self.response?.id == id else { return false }
        self.response = nil
        return true
    }

    /// The session is authenticated: from now on an unsigned request reads nothing after the handshake, and the
    /// unsigned GET still held (it carried the WELCOME) is ended, so the client's next one is signed.
    mutating func sessionAuthenticated() -> DownAction {
        self.isAuthenticated = true
        self.handshakeEnd = self.log.produced
        guard let response = self.response, !response.signed else { return .none }
        return .finish(response, self.finish(response))
    }

    /// Ends `response` (and lets it go if it is the current one): a poll carries the upstream acknowledgement and
    /// whatever there is to send, and after a close the close record.
    private mutating func finish(_ response: Response) -> Ending {
        if self.response?.id == response.id { self.response = nil }
        switch response.mode {
        case .stream:
            return .endStream(closeRecord: !self.isOpen, closeConnection: response.closeDelimited)
        case .poll:
            var records: [HTTPTransportRecord] = [.acknowledge(self.cursor.received)]
            for piece in self.log.pieces(from: response.nextOffset, limit: response.payloadLimit) {
                records.append(.data(offset: piece.offset, payload: piece.bytes))
            }
            if !self.isOpen { records.append(.close) }
            return .complete(records)
        }
    }

    /// A GET on a closed connection: what the client has not received yet (while lingering), then the close record;
    /// then the connection is forgotten.
    private mutating func answerAfterClose(acknowledged: UInt64, shape: HTTPBodyShape) -> DownRequestAnswer {
        var records: [HTTPTransportRecord] = []
        if self.lifecycle == .lingering {
            _ = self.log.acknowledge(acknowledged)
            let limit = shape.recordBytes(inWireBytes: self.settings.maximumPollResponseBytes)
            for piece in self.log.pieces(from: self.log.acknowledged, limit: limit) {
                records.append(.data(offset: piece.offset, payload: piece.bytes))
            }
        }
        records.append(.close)
        self.forget()
        return .complete(records, forget: true)
    }

    // MARK: Upstream

    /// A POST began at `now`: whether it may go on (a closed connection takes none).
    mutating func uploadStarted(now: NIODeadline) -> Bool {
        self.lastActivity = now
        self.openUploads += 1
        return self.isOpen
    }

    /// One record of a POST body admitted as `signed`, at `now`.
    mutating func uploadRecord(_ record: HTTPTransportRecord, signed: Bool, now: NIODeadline) -> RecordOutcome {
        self.lastActivity = now
        guard self.isOpen else { return .stop }
        // An upload admitted before the session was authenticated carries nothing after it (the client ends it and
        // signs the next one): whatever else arrives on it is not the client's.
        guard signed || !self.isAuthenticated else { return .stop }
        switch record {
        case .data(let offset, let payload):
            switch self.cursor.accept(offset: offset, payload: payload) {
            case .deliver(let bytes): return .deliver(bytes)
            case .duplicate: return .none
            case .gap: return .violation("upstream bytes skipped an offset")
            }
        case .acknowledge(let offset):
            return self.log.acknowledge(offset) == .beyondProduced ? .violation("the client acknowledged bytes never sent") : .none
        case .close:
            return .close
        }
    }

    /// Upstream bytes were delivered: whether to write an ACK of them on the streaming response a moment later
    /// (gathering the rest of this read), with ``acknowledgementToWrite()``.
    mutating func scheduleAcknowledgement() -> Bool {
        guard !self.acknowledgementWriteScheduled, let response = self.response, response.mode == .stream else { return false }
        self.acknowledgementWriteScheduled = true
        return true
    }

    /// The offset to acknowledge on the streaming response now, if there is one and it is news.
    mutating func acknowledgementToWrite() -> UInt64? {
        self.acknowledgementWriteScheduled = false
        guard let response = self.response, response.mode == .stream, self.acknowledgementWritten < self.cursor.received else {
            return nil
        }
        self.acknowledgementWritten = self.cursor.received
        return self.acknowledgementWritten
    }

    /// A POST ended (or its TCP connection closed) at `now`: the upstream acknowledgement for its answer.
    mutating func uploadFinished(now: NIODeadline) -> UInt64 {
        self.lastActivity = now
        self.openUploads -= 1
        return self.cursor.received
    }

    // MARK: The end

    /// Whether the connection has been idle (no GET held, no POST open, no request) for the idle timeout at `now`.
    func isIdle(now: NIODeadline) -> Bool {
        self.isOpen && self.response == nil && self.openUploads == 0 && now - self.lastActivity >= self.settings.idleTimeout
    }

    /// What closing does: the current response ends (after a close record when `sendCloseRecord`) or is dropped, and
    /// the connection lingers when the session's last bytes have not been fetched, else is forgotten.
    struct Closing: Equatable {
        /// End this response so (with `ending`), or, without one, drop its TCP connection.
        var response: Response?
        var ending: Ending?
        var lingers: Bool
    }

    mutating func close(sendCloseRecord: Bool) -> Closing? {
        guard self.isOpen else { return nil }
        let current = self.response
        let lingers = sendCloseRecord && current == nil && self.log.unacknowledgedBytes > 0
        self.lifecycle = .lingering
        let ending = current.flatMap { sendCloseRecord ? self.finish($0) : nil }
        self.response = nil
        if !lingers { self.forget() }
        return Closing(response: current, ending: ending, lingers: lingers)
    }

    /// Lets go of what a closed connection kept.
    mutating func forget() {
        self.lifecycle = .forgotten
        self.response = nil
        self.log = OutboundByteLog()
    }
}
