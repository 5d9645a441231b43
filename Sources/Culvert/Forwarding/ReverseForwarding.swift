import CulvertCore
import NIOConcurrencyHelpers
import Logging
public import NIOCore

/// How the server answered one `-R` forward of the current session.
public enum ReverseListenerOutcome: Hashable, Sendable {
    /// The server listens, on this port.
    case listening(port: Int)
    /// The server refused it; the reason as it said it.
    case refused(String)
}

/// Client side of `-R`: the server opens a stream for each connection its reverse listener accepted, with the
/// listener's address (as the client asked for it) as the target; this connector maps that address to the `-R`
/// forward's HOST:HOSTPORT and connects it here. Anything else the server asks for is refused: a server can make the
/// client connect only to what its `-R` forwards name.
struct ReverseTargetConnector: StreamConnector {
    let forwards: [ForwardSpec]
    let connector: TargetConnector

    init(forwards: [ForwardSpec], connectTimeout: TimeAmount, udpTimeout: TimeAmount = .seconds(30)) {
        self.forwards = forwards
        var connector = TargetConnector(
            allowlist: Allowlist(entries: forwards.map { Allowlist.Entry(host: $0.target.host, port: $0.target.port) }),
            connectTimeout: connectTimeout
        )
        connector.udpTimeout = udpTimeout
        self.connector = connector
    }

    /// The listener address the server names a forward by.
    static func listenerAddress(of forward: ForwardSpec) -> TargetAddress {
        TargetAddress(host: forward.bindHost, port: forward.bindPort, transport: forward.target.transport)
    }

    func connect(to target: TargetAddress, on eventLoop: any EventLoop, logger: Logger) -> EventLoopFuture<any Channel> {
        guard let forward = self.forwards.first(where: { Self.listenerAddress(of: $0) == target }) else {
            logger.warning("refused a stream the server opened for \(target): no -R forward listens there")
            return eventLoop.makeFailedFuture(StreamOpenFailure(.notAllowed, "the client has no -R forward for \(target)"))
        }
        return self.connector.connect(to: forward.target, on: eventLoop, logger: logger)
    }
}

extension TunnelClient {
    /// The server's answers to this session's `-R` forwards, in the order of ``Configuration/reverseForwards``, once
    /// all have come (at once when there are none). A new session asks again and replaces it.
    public var reverseListenersAnswered: EventLoopFuture<[ReverseListenerOutcome]> {
        self.reverseAnswers.withLockedValue { $0 } ?? self.eventLoop.makeSucceededFuture([])
    }

    /// Asks the server of a new `session` for every `-R` listener (on the client's loop). A resumed session keeps
    /// them: its LISTEN frames are replayed with the rest, and the server keeps the listeners while it waits.
    func requestReverseListeners(on session: TunnelSession) {
        let forwards = self.configuration.reverseForwards
        let promise = self.eventLoop.makePromise(of: [ReverseListenerOutcome].self)
        self.reverseAnswers.withLockedValue { $0 = promise.futureResult }
        guard !forwards.isEmpty else {
            promise.succeed([])
            return
        }
        let answers = ReverseAnswers(count: forwards.count, promise: promise)
        let logger = self.logger
        session.onListenAnswered = { requestID, result in
            let index = Int(requestID / 2)
            guard forwards.indices.contains(index) else { return }
            let forward = forwards[index]
            switch result {
            case .success(let port):
                logger.info("-R: the server listens on \(ListenAddress(host: forward.bindHost, port: port)) -> \(forward.target) on this side")
                answers.record(.listening(port: port), at: index)
            case .failure(let failure):
                logger.warning("-R \(forward.text): the server refused it: \(failure.message)")
                answers.record(.refused(failure.message), at: index)
            }
        }
        session.ended.assumeIsolated().whenComplete { _ in answers.finish() }
        for (index, forward) in forwards.enumerated() {
            session.requestListen(UInt32(index * 2 + 1), on: ReverseTargetConnector.listenerAddress(of: forward))
        }
    }
}

/// The answers to one session's LISTEN requests as they come; completes its promise once all have.
private final class ReverseAnswers {
    private var outcomes: [ReverseListenerOutcome?]
    private let promise: EventLoopPromise<[ReverseListenerOutcome]>

    init(count: Int, promise: EventLoopPromise<[ReverseListenerOutcome]>) {
        self.outcomes = Array(repeating: nil, count: count)
        self.promise = promise
    }

    func record(_ outcome: ReverseListenerOutcome, at index: Int) {
        guard self.outcomes[index] == nil else { return }
        self.outcomes[index] = outcome
        if self.outcomes.allSatisfy({ $0 != nil }) { self.promise.succeed(self.outcomes.map { $0! }) }
    }

    /// The session ended: what has not been answered never will be.
    func finish() {
        self.promise.succeed(self.outcomes.map { $0 ?? .refused("the session ended before the server answered") })
    }
}
