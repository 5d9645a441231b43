import Culvert
import Dispatch
import Foundation
import NIOConcurrencyHelpers
import NIOCore

/// SIGINT and SIGTERM as an async stream, so that commands can shut down cleanly instead of dying mid-stream.
///
/// Install it first thing in a command, before any listener is bound: a signal that arrives between binding and
/// waiting is then kept, not left to its default action (which kills the process).
enum SignalWaiter {
    enum Outcome<Ended: Sendable> {
        case signal(Int32)
        case ended(Ended)
    }

    /// Starts catching SIGINT and SIGTERM; signals are buffered in the stream until read.
    static func install() -> AsyncStream<Int32> {
        AsyncStream { continuation in
            let queue = DispatchQueue(label: "culvert.signals")
            var sources: [any DispatchSourceSignal] = []
            for signalNumber in [SIGINT, SIGTERM] {
                signal(signalNumber, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: queue)
                source.setEventHandler { continuation.yield(signalNumber) }
                source.resume()
                sources.append(source)
            }
            SignalSources.keep(sources)
        }
    }

    /// Starts catching SIGHUP, the operator's "re-read your files"; each one is yielded until read.
    static func installHangups() -> AsyncStream<Void> {
        AsyncStream { continuation in
            signal(SIGHUP, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: SIGHUP, queue: DispatchQueue(label: "culvert.sighup"))
            source.setEventHandler { continuation.yield() }
            source.resume()
            SignalSources.keep([source])
        }
    }

    /// The first signal from `signals`; from then on, a second one ends the process at once (a user who presses
    /// Ctrl-C again does not want to wait for the shutdown grace).
    static func wait(_ signals: AsyncStream<Int32>) async -> Int32 {
        for await signal in signals {
            Self.exitOnNextSignal(signals)
            return signal
        }
        return SIGTERM
    }

    /// Exits with 128 + the signal's number at the next signal from `signals`, with one line saying so.
    private static func exitOnNextSignal(_ signals: AsyncStream<Int32>) {
        Task.detached {
            for await signal in signals {
                FileHandle.standardError.write(Data("culvert: second \(Self.name(of: signal)): exiting now\n".utf8))
                exit(128 + signal)
            }
        }
    }

    /// `SIGINT (Ctrl-C)`, `SIGTERM`: what logs say instead of the number.
    static func name(of signal: Int32) -> String {
        switch signal {
        case SIGINT: "SIGINT (Ctrl-C)"
        case SIGTERM: "SIGTERM"
        case SIGHUP: "SIGHUP"
        default: "signal \(signal)"
        }
    }

    /// The first signal from `signals` as a future; the process exits at the next one (see ``wait(_:)``). For a
    /// command that must notice a signal in more than one phase: the stream has one reader, this future many.
    static func firstSignal(_ signals: AsyncStream<Int32>, eventLoop: any EventLoop) -> EventLoopFuture<Int32> {
        let promise = eventLoop.makePromise(of: Int32.self)
        Task {
            promise.succeed(await Self.wait(signals))
        }
        return promise.futureResult
    }

    /// Waits for `signal` or for `ended` to complete, whichever comes first.
    static func waitForSignal(_ signal: EventLoopFuture<Int32>, orEndOf ended: EventLoopFuture<SessionError>) async -> Outcome<SessionError> {
        await Self.waitForSignal(signal, orFirstOf: [ended], ifFailed: .shutdown)
    }

    /// Waits for `signal` or for the first of `futures` to complete (`ifFailed` stands for one that failed).
    static func waitForSignal<Ended: Sendable>(
        _ signal: EventLoopFuture<Int32>, orFirstOf futures: [EventLoopFuture<Ended>], ifFailed: Ended
    ) async -> Outcome<Ended> {
        await withCheckedContinuation { (continuation: CheckedContinuation<Outcome<Ended>, Never>) in
            let once = OnceFlag()
            for future in futures {
                future.whenComplete { result in
                    let value = (try? result.get()) ?? ifFailed
                    if once.claim() { continuation.resume(returning: .ended(value)) }
                }
            }
            signal.whenSuccess { signal in
                if once.claim() { continuation.resume(returning: .signal(signal)) }
            }
        }
    }
}

/// Keeps the signal sources alive for the process's life.
private enum SignalSources {
    nonisolated(unsafe) static var all: [any DispatchSourceSignal] = []
    static func keep(_ sources: [any DispatchSourceSignal]) { all += sources }
}

/// True for the first caller of ``claim()`` only (a continuation may be resumed once).
private struct OnceFlag: Sendable {
    private let claimed = NIOLockedValueBox(false)

    func claim() -> Bool {
        self.claimed.withLockedValue { claimed in
            defer { claimed = true }
            return !claimed
        }
    }
}
