import Culvert
import CulvertCore
import CulvertTools
import CulvertTransport
import Logging
import NIOCore

/// Runs one proxy configuration of the matrix: the probes, `auto`, and each transport forced.
struct MatrixRunner: Sendable {
    let serverPort: Int
    let echoPort: Int
    let bytes: Int
    let group: any EventLoopGroup
    let logger: Logger

    /// A forced transport that has not failed after this long is hanging (a blocked transport must fail in seconds).
    static let forcedTimeLimit = 20.0

    /// Returns the result, and `auto`'s client left idle for the idle hold (nil when auto got nowhere).
    func run(_ setup: ProxySetup, proxy: RealProxy, version: String) async -> (SetupResult, TunnelClient?) {
        var result = SetupResult(setup: setup, version: version)
        let endpoint = ServerEndpoint(host: "127.0.0.1", port: setup.kind.isReverse ? proxy.port : self.serverPort)
        let proxyConfiguration = setup.kind.isReverse ? nil : ProxyConfiguration(host: "127.0.0.1", port: proxy.port)
        let options = TransportOptions(proxy: proxyConfiguration, logger: self.logger)
        let session = SessionConfiguration(token: "proxy-matrix")
        result.probes = await TransportNegotiator.probe(server: endpoint, options: options, session: session, group: self.group, logger: self.logger)

        // Each transport forced.
        for kind in TransportNegotiator.preference {
            progress("\(setup.file): \(kind)")
            result.forced[kind] = await self.forced(kind, endpoint: endpoint, options: options, session: session)
            let probe = result.probes.first { $0.transport == kind }
            if case .fails(_, let detail, let seconds) = result.forced[kind]!, seconds > Self.forcedTimeLimit {
                result.problems.append("\(setup.file): forced \(kind) took \(Int(seconds)) s to fail (\(detail))")
            }
            if let probe, case .works(let upstream, _, let text) = result.forced[kind]!, probe.failure == .responseBuffered {
                // Slow, not broken: data moves, but the probe rightly keeps auto off it.
                result.forced[kind] = .works(upstream: upstream, degraded: .responseBuffered, textBodies: text)
            } else if let probe, probe.works != result.forced[kind]!.works {
                result.problems.append(
                    "\(setup.file): the probe says \(kind) \(probe.works ? "works" : "fails (\(probe.detail))"), forced it \(result.forced[kind]!.works ? "works" : "fails")"
                )
            }
        }

        // auto, as users run it.
        progress("\(setup.file): auto")
        let start = ContinuousClock.now
        var idleClient: TunnelClient?
        do {
            let client = try await AutomaticTransport.connect(
                configuration: self.configuration(.websocket, endpoint: endpoint, options: options, session: session),
                cache: nil, group: self.group, logger: self.logger
            )
            result.autoSeconds = Self.seconds(since: start)
            result.autoChoice = client.currentTransport
            if try await self.transfer(through: client, bytes: self.bytes) {
                idleClient = client
            } else {
                result.problems.append("\(setup.file): auto (\(client.currentTransport)) did not carry \(self.bytes >> 20) MiB intact")
                await client.shutdown(gracePeriod: .zero)
            }
        } catch {
            result.problems.append("\(setup.file): auto got no tunnel: \(error)")
        }
        let best = TransportNegotiator.preference.first { kind in
            result.forced[kind]?.works == true && result.probes.contains { $0.transport == kind && $0.works }
        }
        if result.autoChoice != best {
            result.problems.append("\(setup.file): auto chose \(result.autoChoice?.rawValue ?? "nothing"), the best that works is \(best?.rawValue ?? "nothing")")
        }
        // A forced transport must fail for the reason its probe names.
        for kind in TransportNegotiator.preference {
            if case .fails(let failure, let detail, _) = result.forced[kind],
                let probe = result.probes.first(where: { $0.transport == kind }), let expected = probe.failure, failure != expected
            {
                result.problems.append("\(setup.file): forced \(kind) failed as \(failure.rawValue) (\(detail)), its probe as \(expected.rawValue)")
            }
        }
        return (result, idleClient)
    }

    private func configuration(
        _ kind: TransportKind, endpoint: ServerEndpoint, options: TransportOptions, session: SessionConfiguration
    ) -> TunnelClient.Configuration {
        TunnelClient.Configuration(
            server: endpoint, transport: kind, transportOptions: options, session: session,
            forwards: [ForwardSpec(bindPort: 0, target: .init(host: "127.0.0.1", port: self.echoPort))]
        )
    }

    private func forced(
        _ kind: TransportKind, endpoint: ServerEndpoint, options: TransportOptions, session: SessionConfiguration
    ) async -> SetupResult.Forced {
        let start = ContinuousClock.now
        do {
            let client = try await TunnelClient.connect(
                configuration: self.configuration(kind, endpoint: endpoint, options: options, session: session),
                group: self.group, logger: self.logger
            )
            defer { Task { await client.shutdown(gracePeriod: .zero) } }
            guard try await self.transfer(through: client, bytes: self.bytes) else {
                return .fails(.other, detail: "the transfer arrived damaged", seconds: Self.seconds(since: start))
            }
            let snapshot = try await client.session.snapshot()
            return .works(
                upstream: kind == .polling || snapshot.upstreamUsesShortRequests ? .shortRequests : .stream,
                textBodies: snapshot.bodyShape == .text
            )
        } catch {
            return .fails(
                ProbeFailure.classify(error, kind: kind, transportEstablished: false), detail: "\(error)",
                seconds: Self.seconds(since: start)
            )
        }
    }

    /// Moves `bytes` each way through the client's forward and compares sha256 digests.
    private func transfer(through client: TunnelClient, bytes: Int) async throws -> Bool {
        let transfer = try await TransferClient.echoTransfer(
            host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: bytes, group: self.group
        )
        return transfer.digestsMatch && transfer.bytesReceived == bytes
    }

    /// After the hold: 1 MiB each way, and how often the tunnel had to reconnect while idle.
    func finishIdle(_ client: TunnelClient, heldSeconds: Int, reconnectsBefore: Int) async -> SetupResult.Idle {
        let carried = (try? await self.transfer(through: client, bytes: 1 << 20)) ?? false
        let idle = SetupResult.Idle(
            transport: client.currentTransport, heldSeconds: heldSeconds, carriedDataAfter: carried,
            resumptions: await Self.reconnects(client) - reconnectsBefore
        )
        await client.shutdown(gracePeriod: .zero)
        return idle
    }

    /// Connections the client has had to replace so far: resumptions (a transport switch is one too) and new sessions.
    static func reconnects(_ client: TunnelClient) async -> Int {
        ((try? await client.session.snapshot().resumptions) ?? 0) + client.sessionsStarted - 1
    }

    private static func seconds(since start: ContinuousClock.Instant) -> Double {
        let elapsed = ContinuousClock.now - start
        return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    }
}
