import NIOCore

/// The client's downstream of a chunked or polling transport connection, as a pure state machine: one GET to
/// `<prefix>/down` at a time, each asking for the bytes from the offset received so far, retried with backoff when
/// it fails, and the acknowledgements of what came down that a streaming download owes the server.
///
/// It opens no sockets and reads no clock: ``HTTPClientTransportConnection`` feeds it events (each naming the GET it
/// is about, so whatever still comes of an abandoned GET is ignored here, in one place) and carries out the actions
/// it returns, timers included.
struct HTTPDownstreamStateMachine {
    enum State: Equatable {
        /// No GET: before ``begin()``, or while a failed one is dropped.
        case idle
        /// GET `request` is on its way: its connection being opened, then its response awaited or arriving.
        case requesting(request: UInt64, responseStarted: Bool)
        /// The last GET failed; the next goes out at ``retryDue()``.
        case waitingToRetry
        /// The transport connection is closed: nothing more is asked for.
        case closed
    }

    /// What the driver does next.
    enum Action {
        /// Nothing.
        case none
        /// Open a connection for GET `request` (or take the idle one), then report it with ``connectionReady(_:)``.
        case connect(request: UInt64)
        /// Drop the connection of the GET that was in flight (whatever it still delivers is ignored), then connect
        /// for GET `request` at once.
        case reconnect(request: UInt64)
        /// Send GET `request` asking for the bytes from `offset`; it fails unless answered within `timeout` (its head,
        /// when streaming; all of it, when polling).
        case send(request: UInt64, offset: UInt64, timeout: TimeAmount)
        /// The response's head came in time: the streaming GET's timeout no longer applies.
        case cancelTimeout
        /// Drop the failed GET's connection and call ``retryDue()`` after `delay` (`failures` in a row so far, the last
        /// with `error`).
        case retry(after: TimeAmount, failures: Int, error: any Error)
        /// Too many failures in a row: the transport connection is lost, with `error`.
        case fail(any Error)
    }

    let streaming: Bool
    private let settings: HTTPTransportClientSettings

    private(set) var state: State = .idle
    private var lastRequest: UInt64 = 0
    /// GETs failed in a row, with no byte delivered in between.
    private(set) var failures = 0
    /// The bytes received in order so far.
    private(set) var cursor = InboundByteCursor()
    /// The offset the server was last told (in a GET's offset or an ACK record upstream).
    private(set) var acknowledgedToServer: UInt64 = 0
    /// A streaming download owes the server an ACK record upstream.
    private(set) var acknowledgementDue = false
    private var acknowledgementTimerArmed = false

    /// Unacknowledged downstream bytes after which a streaming download acknowledges at once rather than after
    /// ``acknowledgementDelay``.
    static let acknowledgeAtOnceBytes: UInt64 = 256 * 1024
    /// How long a streaming download gathers bytes before it acknowledges them.
    static let acknowledgementDelay = TimeAmount.milliseconds(20)

    init(streaming: Bool, settings: HTTPTransportClientSettings) {
        self.streaming = streaming
        self.settings = settings
    }

    // MARK: Requests

    /// Asks for the first GET (or the next, after a retry wait); does nothing while one is on its way.
    mutating func begin() -> Action {
        switch self.state {
        case .idle, .waitingToRetry:
            return .connect(request: self.nextRequest())
        case .requesting, .closed:
            return .none
        }
    }

    /// The retry wait is over.
    mutating func retryDue() -> Action {
        guard case .waitingToRetry = self.state else { return .none }
        return .connect(request: self.nextRequest())
    }

    /// The GET in flight no longer fits (the body shape changed): drop it and make it again.
    mutating func restart() -> Action {
        guard self.state != .closed else { return .none }
        return .reconnect(request: self.nextRequest())
    }

    /// GET `request` has its connection: it asks for the bytes from the offset received so far, which also tells the
    /// server everything before it arrived.
    mutating func connectionReady(_ request: UInt64) -> Action {
        guard self.isCurrent(request) else { return .none }
        let offset = self.cursor.received
        self.acknowledgedToServer = max(self.acknowledgedToServer, offset)
        return .send(request: request, offset: offset, timeout: self.streaming ? self.settings.requestTimeout : self.settings.pollResponseTimeout)
    }

    /// Whether a GET is on its way (being connected, or its answer awaited or arriving).
    var hasRequestInFlight: Bool {
        if case .requesting = self.state { return true }
        return false
    }

    /// Whether events of GET `request` still count: it is the one in flight.
    func isCurrent(_ request: UInt64) -> Bool {
        if case .requesting(request, _) = self.state { return true }
        return false
    }

    /// GET `request` has its response's head (the driver then checks what it says).
    mutating func responseHead(_ request: UInt64) -> Action {
        guard self.isCurrent(request) else { return .none }
        self.state = .requesting(request: request, responseStarted: true)
        return self.streaming ? .cancelTimeout : .none
    }

    /// GET `request`'s response ended: the next GET goes out at once.
    mutating func responseEnded(_ request: UInt64) -> Action {
        guard self.isCurrent(request) else { return .none }
        self.failures = 0
        return .connect(request: self.nextRequest())
    }

    /// GET `request` failed with `error` (or, with `timedOut`, was not answered in time). `staleConnection` says the
    /// failure means only that the connection it went on had been closed while idle, or that the proxy wants the
    /// request again on a new one: then it is made again at once, without counting as a failure.
    mutating func requestFailed(_ request: UInt64, error: any Error, staleConnection: Bool) -> Action {
        guard self.isCurrent(request) else { return .none }
        if staleConnection { return .reconnect(request: self.nextRequest()) }
        self.failures += 1
        guard self.failures <= self.settings.maximumRetries else {
            self.state = .closed
            return .fail(error)
        }
        self.state = .waitingToRetry
        return .retry(after: self.settings.retryDelay(afterFailures: self.failures), failures: self.failures, error: error)
    }

    /// The transport connection closed: every event from now on is ignored.
    mutating func close() {
        self.state = .closed
        self.acknowledgementDue = false
        self.acknowledgementTimerArmed = false
    }

    private mutating func nextRequest() -> UInt64 {
        self.lastRequest += 1
        self.state = .requesting(request: self.lastRequest, responseStarted: false)
        return self.lastRequest
    }

    // MARK: Bytes and acknowledgements

    /// A DATA record came down: the new part of it to pass on, if any. Delivered bytes are progress, so the count of
    /// failures in a row starts again.
    mutating func accept(offset: UInt64, payload: ByteBuffer) -> InboundByteCursor.Outcome {
        let outcome = self.cursor.accept(offset: offset, payload: payload)
        if case .deliver = outcome { self.failures = 0 }
        return outcome
    }

    /// What a streaming download does about acknowledging after a read delivered bytes.
    enum AcknowledgementAction: Equatable {
        case none
        /// An ACK is due now (``acknowledgementDue``): send it upstream, and cancel the acknowledgement timer.
        case acknowledgeNow
        /// Call ``acknowledgementTimerFired()`` after ``HTTPDownstreamStateMachine/acknowledgementDelay``.
        case armTimer
    }

    /// Bytes were delivered by a read: a streaming download acknowledges them upstream, at once when many are
    /// pending, else after a short delay that gathers more.
    mutating func deliveredRead() -> AcknowledgementAction {
        guard self.streaming, self.state != .closed else { return .none }
        let pending = self.cursor.received - self.acknowledgedToServer
        if pending >= Self.acknowledgeAtOnceBytes {
            self.acknowledgementTimerArmed = false
            self.acknowledgementDue = true
            return .acknowledgeNow
        }
        guard !self.acknowledgementTimerArmed, pending > 0 else { return .none }
        self.acknowledgementTimerArmed = true
        return .armTimer
    }

    /// The acknowledgement timer fired: whether an ACK is now due (``acknowledgementDue``).
    mutating func acknowledgementTimerFired() -> Bool {
        guard self.acknowledgementTimerArmed else { return false }
        self.acknowledgementTimerArmed = false
        guard self.cursor.received > self.acknowledgedToServer else { return false }
        self.acknowledgementDue = true
        return true
    }

    /// The offset to acknowledge in the ACK record going upstream now; clears what was due. The driver cancels the
    /// acknowledgement timer when `timerWasArmed` says one is pending.
    mutating func takeAcknowledgement() -> (offset: UInt64, timerWasArmed: Bool) {
        let armed = self.acknowledgementTimerArmed
        self.acknowledgementDue = false
        self.acknowledgementTimerArmed = false
        self.acknowledgedToServer = self.cursor.received
        return (self.acknowledgedToServer, armed)
    }
}
