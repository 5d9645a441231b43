#if canImport(Glibc)
public import Glibc
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

    /// Starts `path` with `arguments` (the environment is this process's, with `environment` added); with
    /// `outputPath`, its standard output and error go to that file (appended), else to this process's.
    public static func spawn(
        _ path: String, _ arguments: [String], outputPath: String? = nil, environment: [String: String] = [:]
    ) throws -> ChildProcess {
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

        // NIO does not create its sockets close-on-exec: without this, a child would inherit every socket of this
        // process (listeners and connections), keep them open after this process closes them, and even accept on
        // a test's ports. Only standard input, output and error go to the child.
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let outputPath {
            posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        }
        Self.closeInheritedDescriptors(&actions)

        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let result: Int32
        if environment.isEmpty {
            result = posix_spawn(&pid, path, &actions, &attributes, argv, environ)
        } else {
            var inherited: [String] = []
            var entry = environ
            while let pointer = entry.pointee {
                let text = String(cString: pointer)
                let key = text.split(separator: "=", maxSplits: 1).first.map(String.init) ?? text
                if environment[key] == nil { inherited.append(text) }
                entry += 1
            }
            let added = environment.map { "\($0.key)=\($0.value)" }
            let envp: [UnsafeMutablePointer<CChar>?] = (inherited + added).map { strdup($0) } + [nil]
            defer { for pointer in envp { free(pointer) } }
            result = posix_spawn(&pid, path, &actions, &attributes, argv, envp)
        }
        guard result == 0 else { throw SpawnError(description: "cannot start \(path): \(String(cString: strerror(result)))") }
        return ChildProcess(pid: pid)
    }

    private typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32

    /// Has the child close every descriptor from 3 up: glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34 and
    /// later; the Swift module does not export it, so it is looked up by name).
    private static func closeInheritedDescriptors(_ actions: inout posix_spawn_file_actions_t) {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else {
            return
        }
        let closeFrom = unsafeBitCast(symbol, to: CloseFrom.self)
        _ = closeFrom(&actions, 3)
    }

    /// Runs `path` with `arguments` to its end and returns what it wrote to standard output and error, or nil when
    /// it could not be started.
    public static func run(_ path: String, _ arguments: [String]) -> String? {
        let outputPath = "/tmp/culvert-run-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).out"
        defer { unlink(outputPath) }
        guard let child = try? Self.spawn(path, arguments, outputPath: outputPath) else { return nil }
        var status: Int32 = 0
        waitpid(child.pid, &status, 0)
        guard let file = fopen(outputPath, "r") else { return "" }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = fread(&buffer, 1, buffer.count, file)
            if count <= 0 { break }
            bytes += buffer[0..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
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
