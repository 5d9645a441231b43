import CulvertTools
import NIOPosix

/// Waits up to 5 s for something to accept connections on a loopback port; false when nothing did or when
/// `process` exited first.
func waitForListener(port: Int, startedBy process: ChildProcess) async throws -> Bool {
    for _ in 0..<200 {
        if let channel = try? await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: port).get()
        {
            try? await channel.close()
            return true
        }
        guard process.isRunning else { return false }
        try await Task.sleep(for: .milliseconds(25))
    }
    return false
}
