import Culvert
import Dispatch
import Foundation
import NIOCore

/// Waits for SIGINT or SIGTERM, so that commands can shut down cleanly instead of dying mid-stream.
enum SignalWaiter {
    /// Returns the signal that arrived.
    static func wait() async -> Int32 {
        await withCheckedContinuation { (continuation: CheckedContinuation<Int32, Never>) in
            let queue = DispatchQueue(label: "culvert.signals")
            let once = OnceFlag()
            var sources: [any DispatchSourceSignal] = []
            for signalNumber in [SIGINT, SIGTERM] {
                signal(signalNumber, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: queue)
                source.setEventHandler {
                    if once.claim() { continuation.resume(returning: signalNumber) }
                }
                source.resume()
                sources.append(source)
            }
            SignalSources.keep(sources)
        }
    }
}

extension SignalWaiter {
    enum Outcome {
        case signal(Int32)
        case ended(SessionError)
    }

    /// Waits for SIGINT/SIGTERM or for `ended` to complete, whichever comes first.
    static func waitForSignal(orEndOf ended: EventLoopFuture<SessionError>) async -> Outcome {
        await withCheckedContinuation { (continuation: CheckedContinuation<Outcome, Never>) in
            let once = OnceFlag()
            ended.whenComplete { result in
                let reason = (try? result.get()) ?? .shutdown
                if once.claim() { continuation.resume(returning: .ended(reason)) }
            }
            Task {
                let signal = await SignalWaiter.wait()
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

private final class OnceFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var claimed = false

    func claim() -> Bool {
        self.lock.lock()
        defer { self.lock.unlock() }
        if self.claimed { return false }
        self.claimed = true
        return true
    }
}
