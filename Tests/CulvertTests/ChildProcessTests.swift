import CulvertTools
import Foundation
import NIOCore
import NIOPosix
import Testing

struct ChildProcessTests {
    /// A spawned child gets standard input, output and error only: none of this process's sockets (NIO does not
    /// open them close-on-exec), which it would otherwise keep open, and accept on, after this process closed them.
    @Test func childrenInheritNoSockets() async throws {
        let listener = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).get()
        let child = try ChildProcess.spawn("/bin/sleep", ["5"])
        defer { child.stop() }
        // What the child holds besides its standard streams, by what each descriptor is (the program may have a
        // file of its own open for a moment while it starts, e.g. the locale archive; never a socket of ours).
        let directory = "/proc/\(child.pid)/fd"
        let descriptors = try FileManager.default.contentsOfDirectory(atPath: directory).compactMap { Int($0) }
        let sockets = descriptors.filter {
            ((try? FileManager.default.destinationOfSymbolicLink(atPath: "\(directory)/\($0)")) ?? "").hasPrefix("socket:")
        }
        #expect(descriptors.contains(0) && sockets.isEmpty, "the child holds sockets \(sockets.sorted())")
        try await listener.close()
    }
}
