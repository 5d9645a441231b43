import CulvertCore
import Logging
public import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension TunnelClient {
    /// When the ``Configuration/standardIO`` stream is over (both directions finished, or it could not be opened),
    /// with how its opening ended: when a ProxyCommand exits. nil for a client without one.
    public var standardIOEnded: EventLoopFuture<StreamOpenResult>? { self.standardIOPromise?.futureResult }

    /// Carries this process's standard input and output as one stream to `target` (`--stdio HOST:PORT`, ssh's
    /// ProxyCommand): no listener. End of input is carried as a half-close. Before the first session is established
    /// the stream waits for it, as a listener's connection does, so that its first byte goes out with the session's
    /// first message.
    /// - Throws: ``ForwardingError/standardIOUnusable(_:)`` when standard input or output is a file or /dev/null
    ///   (they must be pipes, sockets or a terminal).
    func carryStandardIO(to target: TargetAddress) async throws {
        // /dev/null and other devices that epoll refuses would stop the event loop when registered: refuse them first.
        for (descriptor, name) in [(STDIN_FILENO, "standard input"), (STDOUT_FILENO, "standard output")] {
            if let kind = Self.unwaitableKind(descriptor) { throw ForwardingError.standardIOUnusable("\(name) is \(kind)") }
        }
        // Duplicates, so that the channel closing them does not close the process's own 0 and 1 under its logger.
        let input = dup(STDIN_FILENO)
        let output = dup(STDOUT_FILENO)
        let channel: any Channel
        do {
            channel = try await NIOPipeBootstrap(group: self.eventLoop)
                .channelOption(.autoRead, value: false)
                .channelOption(.allowRemoteHalfClosure, value: true)
                // Input that is all there at the start (`printf x | culvert …`) is read to its end as soon as the
                // channel registers, whatever auto-read says: hold it until the stream handler is behind.
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(WaitingConnectionBuffer()) }
                }
                .takingOwnershipOfDescriptors(input: input, output: output)
                .get()
        } catch {
            close(input)
            close(output)
            throw ForwardingError.standardIOUnusable("\(error)")
        }
        let eventLoop = self.eventLoop
        guard let promise = self.standardIOPromise else { preconditionFailure("carryStandardIO without Configuration.standardIO") }
        eventLoop.execute {
            self.carry(channel, to: target) { result in
                if case .opened = result {
                    channel.closeFuture.whenComplete { _ in promise.succeed(.opened) }
                } else {
                    promise.succeed(result)
                }
            }
            // The stream's handler (or, before the first session, the client's own wait) now sits behind it.
            if let held = try? channel.pipeline.syncOperations.handler(type: WaitingConnectionBuffer.self) {
                channel.pipeline.syncOperations.removeHandler(held, promise: nil)
            }
        }
    }

    /// What `descriptor` is when the event loop cannot wait on it (a file, /dev/null or another device: epoll refuses
    /// them, and NIO would stop the process when registering one); nil for pipes, sockets and terminals.
    static func unwaitableKind(_ descriptor: Int32) -> String? {
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { return nil }
        switch status.st_mode & S_IFMT {
        case S_IFIFO, S_IFSOCK: return nil
        case S_IFCHR: return isatty(descriptor) != 0 ? nil : "a device such as /dev/null"
        case S_IFREG: return "a file"
        default: return "neither a pipe, a socket nor a terminal"
        }
    }
}
