import CulvertCore
import Logging
public import NIOCore

extension LocalListener {
    /// The `-L [BIND:]PORT:HOST:HOSTPORT` listener: accepts TCP connections on a local port and carries each as a
    /// stream to one fixed target. Nothing needs answering before the bytes flow, so the outcome of the opening only
    /// goes to the log (the session says why a target was refused).
    /// A UDP forward (`…/udp`) is a ``datagramForward(_:idleTimeout:)``, whose flows end after `udpTimeout`.
    public static func forward(_ forward: ForwardSpec, udpTimeout: TimeAmount = .seconds(30)) -> LocalListener {
        if forward.target.transport == .udp { return .datagramForward(forward, idleTimeout: udpTimeout) }
        let target = forward.target
        return LocalListener(flag: "-L", text: forward.text, address: forward.listenAddress, announcement: { "forwarding \($0) -> \(target)" }) {
            channel, tunnel, logger in
            tunnel.carry(channel, to: target) { result in
                if case .unavailable(let reason) = result {
                    logger.debug("local connection for \(target) not carried: \(reason)")
                }
            }
        }
    }
}
