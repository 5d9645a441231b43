import CulvertTools
import Foundation

/// `ssh -L` as the benchmark's reference tunnel: a throwaway `sshd` (OpenSSH from Debian) with its own host and
/// user keys in a temporary directory, listening on a loopback port, and an `ssh -N` client forwarding one local
/// port per target through it with aes128-gcm, the cipher most people's ssh picks on x86. Nothing of the machine's
/// own ssh setup is read or changed.
struct SSHReference {
    /// The local forward ports, one per target, in order.
    let ports: [Int]
    /// sshd and ssh, to stop with the benchmark (and to meter their CPU).
    let processes: [ChildProcess]

    /// Starts sshd and the forwarding client; nil (and the reason on standard error) when OpenSSH is missing.
    static func start(targets: [Int], freePort: () throws -> Int) async throws -> SSHReference? {
        if let reason = ThrowawaySSHServer.missingReason {
            benchProgress("\(reason): it adds ssh -L to the comparison")
            return nil
        }
        let server = try await ThrowawaySSHServer.start(port: try freePort())
        var ports: [Int] = []
        var arguments = ["-N", "-T"] + server.clientArguments() + ["-o", "ExitOnForwardFailure=yes"]
        for target in targets {
            let local = try freePort()
            ports.append(local)
            arguments += ["-L", "127.0.0.1:\(local):127.0.0.1:\(target)"]
        }
        arguments.append("\(NSUserName())@127.0.0.1")
        let client = try ChildProcess.spawn(ThrowawaySSHServer.sshPath!, arguments)
        for local in ports { try await waitUntilListening(local) }
        return SSHReference(ports: ports, processes: [server.process, client])
    }
}
