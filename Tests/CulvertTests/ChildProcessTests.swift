import CulvertTools
import Foundation
import NIOPosix
import Testing

struct ChildProcessTests {
    /// A spawned child gets standard input, output and error only: none of this process's sockets (NIO does not
    /// open them close-on-exec), which it would otherwise keep open, and accept on, after this process closed them.
    @Test func childrenInheritNoSockets() async throws {
        let listener = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).get()
        let child = try ChildProcess.spawn("/bin/sleep", ["5"])
        defer { child.stop() }
        let descriptors = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(child.pid)/fd").compactMap { Int($0) }
        #expect(!descriptors.isEmpty && descriptors.allSatisfy { $0 <= 2 }, "the child holds \(descriptors.sorted())")
        try await listener.close()
    }
}
