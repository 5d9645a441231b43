public import CulvertCore
import Logging
import NIOCore

/// What opens the target of a stream the peer asked for (wstunnel's "connector"): a TCP connection today. The
/// session asks it for a channel on the session's loop and carries the stream over it; the connector knows nothing
/// of sessions, and the session nothing of how the target was reached.
///
/// The channel must be connected with auto-read off and remote half-closure allowed (the session reads only while
/// the stream has credit, and carries half-closes). A failure is reported as ``StreamOpenFailure``, which the peer
/// gets in its OPEN_FAIL.
protocol StreamConnector: Sendable {
    func connect(to target: TargetAddress, on eventLoop: any EventLoop, logger: Logger) -> EventLoopFuture<any Channel>
}

/// Why a stream's target could not be opened, as OPEN_FAIL carries it.
public struct StreamOpenFailure: Error, Hashable, Sendable, CustomStringConvertible {
    public var reason: OpenFailReason
    public var message: String

    public init(_ reason: OpenFailReason, _ message: String) {
        self.reason = reason
        self.message = message
    }

    public var description: String { self.message }
}
