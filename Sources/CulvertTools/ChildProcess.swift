#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A child process spawned with a clean signal state.
///
/// Foundation's `Process` on Linux lets children inherit the blocked signal mask of its monitoring thread, so a
/// child such as socat never sees SIGTERM (or SIGCHLD). Spawning with an empty mask and default dispositions gives
/// the child the signals it expects.
public struct ChildProcess: Sendable {
    public let pid: pid_t

    public struct SpawnError: Error, CustomStringConvertible {
        public var description: String
    }

    /// Starts `path` with `arguments` (the environment is this process's).
    public static func spawn(_ path: String, _ arguments: [String]) throws -> ChildProcess {
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, path, nil, &attributes, argv, environ)
        guard result == 0 else { throw SpawnError(description: "cannot start \(path): \(String(cString: strerror(result)))") }
        return ChildProcess(pid: pid)
    }

    /// Whether the child is still running (reaping it if it has exited).
    public var isRunning: Bool {
        var status: Int32 = 0
        return waitpid(self.pid, &status, WNOHANG) == 0
    }

    /// SIGTERM, up to `grace` seconds to exit, then SIGKILL; returns once the child is gone.
    public func stop(grace: Double = 3) {
        kill(self.pid, SIGTERM)
        var waited = 0.0
        while self.isRunning && waited < grace {
            usleep(20_000)
            waited += 0.02
        }
        if self.isRunning {
            kill(self.pid, SIGKILL)
            var status: Int32 = 0
            waitpid(self.pid, &status, 0)
        }
    }
}
