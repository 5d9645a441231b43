import Foundation

/// A throwaway `sshd` (OpenSSH from Debian) on a loopback port, with its own host and user keys in a temporary
/// directory: the ssh server the `--stdio` tests reach through the tunnel and the benchmark's `ssh -L` reference.
/// Nothing of the machine's own ssh setup is read or changed. Stop it by PID with ``stop()``.
public struct ThrowawaySSHServer: Sendable {
    public static let sshdPath = "/usr/sbin/sshd"

    public let process: ChildProcess
    public let port: Int
    /// Holds the keys, the configuration and the PID file.
    public let directory: String
    /// The private key that ``clientArguments`` log in with.
    public var userKeyPath: String { self.directory + "/user" }

    /// Why OpenSSH cannot be started here (what to install), or nil when it can.
    public static var missingReason: String? {
        FileManager.default.isExecutableFile(atPath: Self.sshdPath) && Self.executable("ssh") != nil && Self.executable("ssh-keygen") != nil
            ? nil : "OpenSSH is not installed (apt-get install -y openssh-server openssh-client)"
    }

    /// Starts sshd on `port` (picked by the caller, on 127.0.0.1), accepting the user key for this user, with
    /// `cipher` only.
    public static func start(port: Int, cipher: String = "aes128-gcm@openssh.com") async throws -> ThrowawaySSHServer {
        if let reason = Self.missingReason { throw ChildProcess.SpawnError(description: reason) }
        let directory = NSTemporaryDirectory() + "culvert-sshd-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        for key in ["host", "user"] {
            _ = ChildProcess.run(Self.executable("ssh-keygen")!, ["-q", "-t", "ed25519", "-N", "", "-f", "\(directory)/\(key)"])
        }
        try FileManager.default.copyItem(atPath: "\(directory)/user.pub", toPath: "\(directory)/authorized_keys")
        // sshd wants its privilege-separation directory even when it runs unprivileged as this user.
        try? FileManager.default.createDirectory(atPath: "/run/sshd", withIntermediateDirectories: true)
        let config = """
            ListenAddress 127.0.0.1:\(port)
            HostKey \(directory)/host
            AuthorizedKeysFile \(directory)/authorized_keys
            PidFile \(directory)/sshd.pid
            StrictModes no
            UsePAM no
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            PermitRootLogin prohibit-password
            AllowTcpForwarding yes
            Ciphers \(cipher)
            LogLevel ERROR
            """
        try config.write(toFile: "\(directory)/sshd_config", atomically: true, encoding: .utf8)
        let process = try ChildProcess.spawn(Self.sshdPath, ["-D", "-e", "-f", "\(directory)/sshd_config"], outputPath: "\(directory)/sshd.log")
        let server = ThrowawaySSHServer(process: process, port: port, directory: directory)
        guard try await RealProxy.waitForListener(port: port, startedBy: process) else {
            let log = (try? String(contentsOfFile: "\(directory)/sshd.log", encoding: .utf8)) ?? ""
            server.stop()
            throw ChildProcess.SpawnError(description: "sshd did not start on 127.0.0.1:\(port): \(log)")
        }
        return server
    }

    /// `ssh` options that log in to this server as this user with its key, never asking anything and never reading
    /// or writing the user's known hosts (add the destination, `USER@127.0.0.1`, and a command).
    public func clientArguments(cipher: String = "aes128-gcm@openssh.com") -> [String] {
        [
            "-p", "\(self.port)", "-i", self.userKeyPath, "-c", cipher,
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes",
        ]
    }

    /// The ssh client, found on PATH.
    public static var sshPath: String? { Self.executable("ssh") }

    /// Stops sshd by its PID and removes its directory.
    public func stop() {
        self.process.stop()
        try? FileManager.default.removeItem(atPath: self.directory)
    }

    private static func executable(_ name: String) -> String? {
        let paths = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") + ["/usr/bin"]
        return paths.map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }
}
