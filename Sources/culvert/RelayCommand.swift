import ArgumentParser
import Culvert
import CulvertTools
import Foundation
import NIOPosix

/// `culvert relay` (not listed in the help): a plain TCP relay on loopback built on SwiftNIO, with no tunnel in it.
///
/// `culvert bench` chains two of these as a reference path: the cost of waking two SwiftNIO processes per round
/// trip, which any tunnel with a client and a server process built on SwiftNIO pays before doing any work of its own.
/// With `--echo` it is an echo target instead (the benchmark's idle-stream targets, which need a process of their own
/// for their file descriptors).
struct RelayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relay",
        abstract: "Relay TCP connections from one loopback port to another (the benchmark's SwiftNIO reference).",
        shouldDisplay: false
    )

    @Option(help: "Loopback port to listen on.")
    var listen: Int

    @Option(help: "Loopback port to relay each connection to.")
    var to: Int?

    @Flag(help: "Echo what each connection sends instead of relaying it.")
    var echo = false

    func validate() throws {
        guard self.echo || self.to != nil else { throw ValidationError("give --to PORT, or --echo") }
    }

    func run() async throws {
        let signals = SignalWaiter.install()
        Self.raiseDescriptorLimit()
        if self.echo {
            let echo: EchoServer
            do {
                echo = try await EchoServer.start(port: self.listen, group: MultiThreadedEventLoopGroup.singleton)
            } catch {
                fail("cannot listen on 127.0.0.1:\(self.listen): \(describeBindError(error))")
            }
            _ = await SignalWaiter.wait(signals)
            try? await echo.close()
            return
        }
        let relay: CuttingRelay
        do {
            relay = try await CuttingRelay.start(targetPort: self.to!, port: self.listen, group: MultiThreadedEventLoopGroup.singleton)
        } catch {
            fail("cannot listen on 127.0.0.1:\(self.listen): \(describeBindError(error))")
        }
        _ = await SignalWaiter.wait(signals)
        try? await relay.close()
    }

    /// A relay holds two descriptors per connection, so the benchmark's idle streams need more than the usual soft
    /// limit: raised to the hard limit (and beyond, to 65,536, where the process may). A relay that cannot raise it
    /// still runs, and the benchmark reports the connections it could not open. Returns the limit it has then.
    @discardableResult
    static func raiseDescriptorLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
        let wanted = rlimit(rlim_cur: max(limit.rlim_max, 65_536), rlim_max: max(limit.rlim_max, 65_536))
        if setrlimit(Int32(RLIMIT_NOFILE.rawValue), [wanted]) != 0 {
            limit.rlim_cur = limit.rlim_max
            _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), [limit])
        }
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
        return Int(limit.rlim_cur)
    }
}
