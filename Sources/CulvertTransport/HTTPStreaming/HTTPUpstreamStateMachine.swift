import NIOCore
import NIOHTTP1

/// The client's upstream of a chunked or polling transport connection, as a pure state machine: the bytes the
/// session sent, by offset, until the server acknowledges them, and the POSTs to `<prefix>/up` that carry them, one at
/// a time. A chunked connection starts with long streaming POSTs and moves to short ones, for good, when the path
/// holds, refuses or cuts streaming request bodies; polling sends short ones only. A failed POST is retried with
/// backoff, from the last acknowledgement.
///
/// It opens no sockets and reads no clock: ``HTTPClientTransportConnection`` feeds it events (each naming the POST it
/// is about, so whatever still comes of an abandoned POST is ignored here, in one place), carries out the actions it
/// returns, and encodes what it says to send in the body shape of the moment.
struct HTTPUpstreamStateMachine {
    enum Mode: String {
        /// One long POST whose chunked body carries records as they come.
        case stream
        /// One short POST, with a length, per batch of records.
        case batch
    }

    enum State: Equatable {
        /// No POST on its way.
        case idle
        /// POST `request` waits for its connection.
        case connecting(request: UInt64)
        /// Streaming POST `request` has its body open: records go into it as the session sends them.
        case streaming(request: UInt64)
        /// POST `request` is sent whole (a short one, or a streaming one whose body this side ended) and awaits its
        /// response.
        case awaitingResponse(request: UInt64, endedStream: Bool)
        /// The last POST failed; the next goes out at ``retryDue(acknowledgementDue:)``.
        case waitingToRetry
        /// The transport connection is closed.
        case closed
    }

    /// What the driver does next.
    enum Action {
        case none
        /// Open a connection for POST `request` (or take the idle one), then report it with ``connectionReady(_:)``.
        case connect(request: UInt64)
        /// Send streaming POST `request`'s head, its first record at `offset`; end its body after `maxAge`
        /// (``streamAged(_:)``); then write into it (``Action/writeStream``).
        case openStream(request: UInt64, offset: UInt64, maxAge: TimeAmount)
        /// Write what is unsent (and any ACK due) into the open streaming body, reporting each piece.
        case writeStream
        /// Send short POST `request` with the records from `offset` (reported with ``sentBatch(upTo:)``); it fails
        /// unless answered within `timeout`.
        case sendBatch(request: UInt64, offset: UInt64, timeout: TimeAmount)
        /// End streaming POST `request`'s body; it fails unless answered within `timeout`.
        case endStream(request: UInt64, timeout: TimeAmount)
        /// Drop the POST in flight and its connection, then ask ``pump(acknowledgementDue:)`` again (the POST failed
        /// only because its connection had gone stale).
        case reconnect
        /// Streaming POSTs do not get through: say why, drop the POST in flight and its connection, call
        /// ``switchToBatches()`` and go on with short POSTs.
        case switchToBatches(reason: String)
        /// Drop the failed POST's connection and call ``retryDue(acknowledgementDue:)`` after `delay`.
        case retry(after: TimeAmount, failures: Int, error: any Error)
        /// Too many failures in a row: the transport connection is lost, with `error`.
        case fail(any Error)
    }

    private let settings: HTTPTransportClientSettings
    private(set) var mode: Mode
    private(set) var state: State = .idle
    private var lastRequest: UInt64 = 0
    /// The bytes sent by the session, from the server's last acknowledgement on.
    private(set) var log = OutboundByteLog()
    /// Where the next record starts: the end of what the POSTs on their way carry.
    private(set) var sentUpTo: UInt64 = 0
    /// Payload bytes in the open streaming POST, for ``HTTPTransportClientSettings/streamRequestLimitBytes``.
    private(set) var streamPayloadBytes = 0
    /// Bytes of the open streaming POST's body on the wire (record headers and any base64 included).
    private(set) var streamWireBytes = 0
    /// POSTs failed in a row.
    private(set) var failures = 0
    /// Streaming POSTs cut in a row before this side ended them.
    private var streamCuts = 0
    /// The acknowledged offset when the watchdog was armed; nil while it is not.
    private var watchdogStart: UInt64?

    init(streaming: Bool, settings: HTTPTransportClientSettings) {
        self.settings = settings
        self.mode = streaming ? .stream : .batch
    }

    /// Whether the session may send more: the unacknowledged bytes are within the send window.
    var isWritable: Bool { self.log.unacknowledgedBytes < self.settings.sendWindowBytes }

    /// Whether bytes wait to go in a POST.
    var hasUnsentBytes: Bool { self.sentUpTo < self.log.produced }

    /// The request in flight, if any.
    private var currentRequest: UInt64? {
        switch self.state {
        case .connecting(let request), .streaming(let request), .awaitingResponse(let request, _): request
        case .idle, .waitingToRetry, .closed: nil
        }
    }

    /// Whether events of POST `request` still count: it is the one in flight.
    func isCurrent(_ request: UInt64) -> Bool { self.currentRequest == request }

    // MARK: The session's bytes

    /// The session sent `message`: it goes in the next POST (or the open one).
    mutating func append(_ message: ByteBuffer, acknowledgementDue: Bool) -> Action {
        guard self.state != .closed else { return .none }
        self.log.append(message)
        return self.pump(acknowledgementDue: acknowledgementDue)
    }

    /// The unsent bytes, as pieces of at most `limit` bytes in all.
    func unsentPieces(limit: Int) -> [(offset: UInt64, bytes: ByteBuffer)] {
        self.log.pieces(from: self.sentUpTo, limit: limit)
    }

    /// The server acknowledged everything before `offset`.
    mutating func acknowledge(_ offset: UInt64) -> OutboundByteLog.AcknowledgeResult {
        let result = self.log.acknowledge(offset)
        if result == .advanced {
            self.failures = 0
            self.sentUpTo = max(self.sentUpTo, offset)
            self.watchdogStart = nil
        }
        return result
    }

    // MARK: Requests

    /// Sends what waits, and any ACK due: into the open streaming body, or in a new POST when none is on its way.
    mutating func pump(acknowledgementDue: Bool) -> Action {
        guard self.hasUnsentBytes || acknowledgementDue else { return .none }
        switch (self.mode, self.state) {
        case (.stream, .streaming):
            return .writeStream
        case (_, .idle):
            return .connect(request: self.nextRequest())
        default:
            return .none
        }
    }

    /// POST `request` has its connection.
    mutating func connectionReady(_ request: UInt64) -> Action {
        guard case .connecting(request) = self.state else { return .none }
        switch self.mode {
        case .stream:
            self.sentUpTo = self.log.acknowledged
            self.streamPayloadBytes = 0
            self.streamWireBytes = 0
            self.state = .streaming(request: request)
            return .openStream(request: request, offset: self.sentUpTo, maxAge: self.settings.streamRequestMaxAge)
        case .batch:
            self.state = .awaitingResponse(request: request, endedStream: false)
            return .sendBatch(request: request, offset: self.sentUpTo, timeout: self.settings.requestTimeout)
        }
    }

    /// The short POST on its way carries the records up to `offset`.
    mutating func sentBatch(upTo offset: UInt64) {
        self.sentUpTo = max(self.sentUpTo, offset)
    }

    /// `wireBytes` more went into the open streaming body: an ACK record, or (with `endingAt`) a DATA record of
    /// `payloadBytes` whose last byte is just before `endingAt`.
    mutating func wroteToStream(wireBytes: Int, payloadBytes: Int = 0, endingAt end: UInt64? = nil) {
        self.streamWireBytes += wireBytes
        self.streamPayloadBytes += payloadBytes
        if let end { self.sentUpTo = max(self.sentUpTo, end) }
    }

    /// A write into the open streaming body is done; `full` says a piece did not fit under the body's `wireLimit`.
    /// The body ends when something is left for the next POST or it reached its limits.
    mutating func streamWriteFinished(full: Bool, wireLimit: Int) -> Action {
        guard case .streaming = self.state else { return .none }
        if full || self.hasUnsentBytes || self.streamPayloadBytes >= self.settings.streamRequestLimitBytes
            || self.streamWireBytes >= wireLimit
        {
            return self.endStream()
        }
        return .none
    }

    /// Ends the open streaming body (the session authenticated, say, and the next POST is signed); the next POST
    /// begins when its response has come.
    mutating func endStream() -> Action {
        guard case .streaming(let request) = self.state else { return .none }
        self.state = .awaitingResponse(request: request, endedStream: true)
        return .endStream(request: request, timeout: self.settings.requestTimeout)
    }

    /// Streaming POST `request` has been open for ``HTTPTransportClientSettings/streamRequestMaxAge``.
    mutating func streamAged(_ request: UInt64) -> Action {
        guard case .streaming(request) = self.state else { return .none }
        return self.endStream()
    }

    /// POST `request`'s response head says the path refuses streaming request bodies (411 Length Required, 413 from
    /// a body limit a long POST reaches, 400 from chunked refused): short POSTs can still get through.
    mutating func streamingRefused(_ request: UInt64, status: HTTPResponseStatus) -> Action {
        guard self.isCurrent(request), self.mode == .stream else { return .none }
        return .switchToBatches(reason: "the streaming POST was answered \(status.code) \(status.reasonPhrase)")
    }

    /// POST `request`'s response ended: the next goes out when there is something to send.
    mutating func responseEnded(_ request: UInt64, acknowledgementDue: Bool) -> Action {
        guard self.isCurrent(request) else { return .none }
        if case .awaitingResponse(_, endedStream: true) = self.state { self.streamCuts = 0 }
        self.state = .idle
        self.failures = 0
        return self.pump(acknowledgementDue: acknowledgementDue)
    }

    /// POST `request` failed with `error` (or was not answered in time). `staleConnection` says only its connection
    /// had gone stale (or the proxy wants it again with new credentials): then it goes again at once, uncounted.
    mutating func requestFailed(_ request: UInt64, error: any Error, staleConnection: Bool) -> Action {
        guard self.isCurrent(request) else { return .none }
        if staleConnection {
            self.abandon()
            return .reconnect
        }
        if self.mode == .stream, case .streaming = self.state {
            // Cut while its body was still open: some proxies cut request bodies that trickle for too long.
            self.streamCuts += 1
            if self.streamCuts >= 2 {
                return .switchToBatches(
                    reason: "the streaming POST was cut before it ended \(self.streamCuts) times in a row (\(error)); the path cuts long request bodies"
                )
            }
        }
        self.abandon()
        self.failures += 1
        guard self.failures <= self.settings.maximumRetries else {
            self.close()
            return .fail(error)
        }
        self.state = .waitingToRetry
        return .retry(after: self.settings.retryDelay(afterFailures: self.failures), failures: self.failures, error: error)
    }

    /// The retry wait is over.
    mutating func retryDue(acknowledgementDue: Bool) -> Action {
        guard case .waitingToRetry = self.state else { return .none }
        self.state = .idle
        return self.pump(acknowledgementDue: acknowledgementDue)
    }

    /// Upstream goes as short POSTs from now on, from the last acknowledgement; the POST in flight is dropped.
    mutating func switchToBatches() {
        guard self.state != .closed else { return }
        self.mode = .batch
        self.abandon()
        self.watchdogStart = nil
    }

    /// Drops the POST in flight (the body shape changed, or it failed): what it carried goes again from the last
    /// acknowledgement.
    mutating func abandon() {
        guard self.state != .closed else { return }
        self.state = .idle
        self.sentUpTo = self.log.acknowledged
    }

    /// The transport connection closed: every event from now on is ignored, and the bytes are let go.
    mutating func close() {
        self.state = .closed
        self.log = OutboundByteLog()
        self.sentUpTo = 0
        self.watchdogStart = nil
    }

    private mutating func nextRequest() -> UInt64 {
        self.lastRequest += 1
        self.state = .connecting(request: self.lastRequest)
        return self.lastRequest
    }

    // MARK: The acknowledgement watchdog

    /// Whether to arm the watchdog (call ``watchdogFired()`` after
    /// ``HTTPTransportClientSettings/upstreamAckTimeout``): streaming, bytes await acknowledgement and it is not
    /// armed already.
    mutating func armWatchdog() -> Bool {
        guard self.mode == .stream, self.state != .closed, self.watchdogStart == nil, self.log.unacknowledgedBytes > 0 else {
            return false
        }
        self.watchdogStart = self.log.acknowledged
        return true
    }

    /// The watchdog fired: the reason to switch to short POSTs (``Action/switchToBatches(reason:)``) when nothing was
    /// acknowledged for the whole timeout while the streaming POST was open (every acknowledgement disarms it), so the
    /// path buffers request bodies; nil when there is nothing left to acknowledge.
    mutating func watchdogFired() -> String? {
        guard let start = self.watchdogStart else { return nil }
        self.watchdogStart = nil
        guard self.mode == .stream, self.state != .closed, self.log.unacknowledgedBytes > 0, self.log.acknowledged == start else {
            return nil
        }
        return "no acknowledgement within \(self.settings.upstreamAckTimeout.roundedText) while the streaming POST was open; the path buffers request bodies"
    }
}
