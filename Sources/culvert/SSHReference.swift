import CulvertTools
import Foundation

/// `ssh -L` as the benchmark's reference tunnel: a throwaway `sshd` (OpenSSH from Debian) with its own host and
/// user keys in a temporary directory, listening on a loopback port, and an `ssh -N` client forwarding one local
/// port per target through it with aes128-gcm, the cipher most people's ssh picks on x86. Nothing of the machine's
/// own ssh setup is read or changed.
struct SSHReference {
    /// The local forward ports, one per target, in order.
    let ports: [Int]
    /// sshd and ssh, to stop with the benchmark.
    let processes: [ChildProcess]

    /// Starts sshd and the forwarding client; nil (and the reason on standard error) when OpenSSH is missing.
    static func start(targets: [Int], freePort: () throws -> Int) async throws -> SSHReference? {
        let sshd = "/usr/sbin/sshd"
        guard FileManager.default.isExecutableFile(atPath: sshd), let ssh = findExecutable("ssh"),
            let keygen = findExecutable("ssh-keygen")
        else {
            benchProgress("OpenSSH is not installed: `apt-get install -y openssh-server openssh-client` adds ssh -L to the comparison")
            return nil
        }
        let directory = NSTemporaryDirectory() + "culvert-bench-ssh-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        for key in ["host", "user"] {
            _ = ChildProcess.run(keygen, ["-q", "-t", "ed25519", "-N", "", "-f", "\(directory)/\(key)"])
        }
        try FileManager.default.copyItem(atPath: "\(directory)/user.pub", toPath: "\(directory)/authorized_keys")
        // sshd wants its privilege-separation directory even when it runs unprivileged as this user.
        try? FileManager.default.createDirectory(atPath: "/run/sshd", withIntermediateDirectories: true)
        let port = try freePort()
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
            Ciphers aes128-gcm@openssh.com
            LogLevel ERROR
            """
        try config.write(toFile: "\(directory)/sshd_config", atomically: true, encoding: .utf8)
        let server = try ChildProcess.spawn(sshd, ["-D", "-e", "-f", "\(directory)/sshd_config"])
        try await waitUntilListening(port)
        var ports: [Int] = []
        var arguments = [
            "-N", "-T", "-p", "\(port)", "-i", "\(directory)/user", "-c", "aes128-gcm@openssh.com",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR",
        ]
        for target in targets {
            let local = try freePort()
            ports.append(local)
            arguments += ["-L", "127.0.0.1:\(local):127.0.0.1:\(target)"]
        }
        arguments.append("\(NSUserName())@127.0.0.1")
        let client = try ChildProcess.spawn(ssh, arguments)
        for local in ports { try await waitUntilListening(local) }
        return SSHReference(ports: ports, processes: [server, client])
    }
}
