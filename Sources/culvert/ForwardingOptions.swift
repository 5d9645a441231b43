import ArgumentParser
import Culvert
import CulvertCore
import Foundation

/// What `culvert client` forwards, grouped in its help: `-L`, `-R`, `-D`, `-H`, `--stdio` and their settings. Each
/// becomes a listener (or the stdio stream) of the Forwarding layer.
struct ForwardingOptions: ParsableArguments {
    @Option(name: .customShort("L"), help: ArgumentHelp(
        "Listen on BIND:PORT here (BIND defaults to 127.0.0.1) and carry each connection to HOST:HOSTPORT, resolved on the server's side; /udp forwards datagrams. Repeatable.",
        valueName: "[BIND:]PORT:HOST:HOSTPORT[/udp]"))
    var forwards: [String] = []

    @Option(name: .customShort("R"), help: ArgumentHelp(
        "Reverse forward [BIND:]PORT:HOST:HOSTPORT: the server listens on BIND:PORT (BIND defaults to 127.0.0.1 there; the server must allow it with --allow-reverse) and each connection goes to HOST:HOSTPORT on this side; /udp forwards datagrams. Repeatable.",
        valueName: "[BIND:]PORT:HOST:HOSTPORT[/udp]"))
    var reverseForwards: [String] = []

    @Option(name: .customShort("D"), help: ArgumentHelp(
        "A SOCKS5 proxy on [BIND:]PORT (BIND defaults to 127.0.0.1): each connection goes to the target it names, resolved on the server's side. Repeatable.",
        valueName: "[BIND:]PORT"))
    var socks: [String] = []

    @Option(name: .customShort("H"), help: ArgumentHelp(
        "An HTTP proxy on [BIND:]PORT (BIND defaults to 127.0.0.1) for CONNECT and http:// requests, each to the target it names on the server's side (HTTPS_PROXY=http://127.0.0.1:PORT). Repeatable.",
        valueName: "[BIND:]PORT"))
    var httpProxies: [String] = []

    @Option(help: ArgumentHelp(
        "The USER:PASS SOCKS5 clients must give (RFC 1929); default: CULVERT_SOCKS_USER, else no authentication.",
        valueName: "USER:PASS"))
    var socksUser: String?

    @Option(help: ArgumentHelp(
        "Carry standard input and output as one stream to HOST:PORT and exit when it ends (ssh -o ProxyCommand='culvert client URL --stdio %h:%p'). Logs go to stderr.",
        valueName: "HOST:PORT"))
    var stdio: String?

    @Option(help: ArgumentHelp("Seconds a UDP flow (-L/-R …/udp) lasts without a datagram either way (DNS-friendly default).", valueName: "seconds"))
    var udpTimeout: Double = 30

    /// Every forward well-formed, no local port taken twice, a positive UDP timeout.
    func validate() throws {
        let listeners = try self.parsedForwards().map { LocalListener.forward($0) } + self.parsedListeners()
        if let problem = ForwardCheck.problem(with: listeners) { throw ValidationError(problem) }
        _ = try self.parsedStandardIOTarget()
        _ = try self.parsedReverseForwards()
        if !(self.udpTimeout > 0) { throw ValidationError("--udp-timeout must be more than 0 seconds") }
    }

    /// The `-L` forwards as given.
    func parsedForwards() throws -> [ForwardSpec] {
        var forwards: [ForwardSpec] = []
        for text in self.forwards {
            do { forwards.append(try ForwardSpec(parsing: text)) } catch { throw ValidationError(error.description) }
        }
        return forwards
    }

    /// The `-R` forwards as given; each BIND:PORT once.
    func parsedReverseForwards() throws -> [ForwardSpec] {
        var forwards: [ForwardSpec] = []
        for text in self.reverseForwards {
            do {
                forwards.append(try ForwardSpec(parsing: text))
            } catch {
                guard case .invalidForward(_, let reason) = error else { throw ValidationError(error.description) }
                throw ValidationError("bad -R '\(text)': \(reason)")
            }
        }
        for (index, forward) in forwards.enumerated() where forwards[..<index].contains(where: { $0.listenAddress == forward.listenAddress }) {
            throw ValidationError("bad -R '\(self.reverseForwards[index])': \(forward.listenAddress) is already asked for by another -R; give each its own port")
        }
        return forwards
    }

    /// The listeners besides `-L`: the `-D` SOCKS5 proxies, then the `-H` HTTP proxies.
    func parsedListeners() throws -> [LocalListener] {
        var credentials: SOCKSCredentials?
        if let text = self.socksUser ?? ProcessInfo.processInfo.environment["CULVERT_SOCKS_USER"].flatMap({ $0.isEmpty ? nil : $0 }) {
            do { credentials = try SOCKSCredentials(parsing: text) } catch { throw ValidationError(error.description) }
            if self.socks.isEmpty && self.socksUser != nil { throw ValidationError("--socks-user needs a SOCKS5 proxy (-D [BIND:]PORT)") }
        }
        var listeners: [LocalListener] = []
        for text in self.socks {
            do { listeners.append(.socks(try ListenAddress(parsing: text, flag: "-D"), credentials: credentials)) } catch {
                throw ValidationError(error.description)
            }
        }
        for text in self.httpProxies {
            do { listeners.append(.httpProxy(try ListenAddress(parsing: text, flag: "-H"))) } catch {
                throw ValidationError(error.description)
            }
        }
        return listeners
    }

    /// The `--stdio` target, if given.
    func parsedStandardIOTarget() throws -> TargetAddress? {
        guard let text = self.stdio else { return nil }
        do { return try TargetAddress(parsing: text, flag: "--stdio") } catch { throw ValidationError(error.description) }
    }
}
