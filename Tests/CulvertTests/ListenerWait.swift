import CulvertTools
import NIOPosix

/// Waits up to 5 s for something to accept connections on a loopback port while `process` keeps running; false
/// when it exited instead (e.g. because another test's process took the port first: then something else may be
/// listening there, which is why the process must still be running a while after the port answers).
func waitForListener(port: Int, startedBy process: ChildProcess) async throws -> Bool {
    for _ in 0..<200 {
        if let channel = try? await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: port).get()
        {
            try? await channel.close()
            try await Task.sleep(for: .milliseconds(100))
            return process.isRunning
        }
        guard process.isRunning else { return false }
        try await Task.sleep(for: .milliseconds(25))
    }
    return false
}

/// Starts a fixture process on a free port, up to five times when the port was taken in between.
///
/// The ports come from 20000–31999, below Linux's ephemeral range (32768 and up): a port a test binds with port 0
/// can then never be the one just chosen for a proxy, which would make the proxy fail to bind (nginx retries for
/// seconds before it exits) while the test talks to the wrong listener.
func startOnFreePort<Fixture>(_ attempt: (_ port: Int) async throws -> Fixture?) async throws -> Fixture? {
    for _ in 0..<5 {
        for _ in 0..<50 {
            let port = Int.random(in: 20000..<32000)
            guard let probe = try? await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .bind(host: "127.0.0.1", port: port).get()
            else { continue }
            try await probe.close()
            if let fixture = try await attempt(port) { return fixture }
            break
        }
    }
    return nil
}
