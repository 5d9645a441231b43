import Culvert
import CulvertCore
import CulvertTools
import CulvertTransport
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// `culvert bench --resume`: for each transport, a stream does 1-byte round trips without pause through an
/// in-process tunnel whose connection a relay cuts `cuts` times; reports the time from each cut to the first round
/// trip completed after it (reconnect after the first backoff delay of 50–100 ms, resumption handshake, replay).
struct ResumeBenchmark {
    let cuts: Int

    func run() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        var logger = Logger(label: "culvert.bench")
        logger.logLevel = .error
        let echo = try await EchoServer.start(group: group)
        print("culvert bench --resume: \(self.cuts) cuts per transport, in one process; time from a cut to data flowing again")
        print("transport    median ms   max ms   resumptions")
        for transport in TransportKind.allCases {
            let server = try await TunnelServer.start(
                configuration: .init(
                    listenHost: "127.0.0.1", listenPort: 0,
                    session: SessionConfiguration(token: "bench"),
                    allowlist: Allowlist(entries: [try Allowlist.Entry(parsing: "127.0.0.1:\(echo.port)")])
                ),
                group: group, logger: logger
            )
            let relay = try await CuttingRelay.start(targetPort: server.localAddress!.port!, group: group)
            let client = try await TunnelClient.connect(
                configuration: .init(
                    server: ServerEndpoint(host: "127.0.0.1", port: relay.port),
                    transport: transport,
                    session: SessionConfiguration(token: "bench"),
                    forwards: [ForwardSpec(bindPort: 0, target: .init(host: "127.0.0.1", port: echo.port))],
                    // Each cut is measured on its own: the backoff starts over between cuts (by default it does
                    // only after 10 s of a stable connection, so cuts in quick succession wait longer and longer).
                    reconnect: ReconnectBackoff(stableAfter: .milliseconds(200))
                ),
                group: group, logger: logger
            )
            let pinger = try await ContinuousPinger.start(port: client.listenerAddresses[0].port!, group: group)
            var gaps: [Double] = []
            for _ in 0..<self.cuts {
                try await Task.sleep(for: .milliseconds(300))
                let cutAt = NIODeadline.now()
                relay.cutAll()
                guard let flowing = try await pinger.firstRoundTrip(after: cutAt, within: .seconds(30)) else {
                    throw CLIError("\(transport): no round trip within 30 s of a cut")
                }
                gaps.append(Double((flowing - cutAt).nanoseconds) / 1e6)
            }
            gaps.sort()
            let resumptions = try await client.session.snapshot().resumptions
            print(
                transport.rawValue.padding(toLength: 13, withPad: " ", startingAt: 0)
                    + String(format: "%-12.1f", gaps[gaps.count / 2])
                    + String(format: "%-9.1f", gaps.last!)
                    + "\(resumptions)"
            )
            pinger.stop()
            await client.shutdown(gracePeriod: .zero)
            await server.shutdown(gracePeriod: .zero)
            try await relay.close()
        }
        try await echo.close()
    }
}

/// Keeps one 1-byte round trip in flight to an echo service and remembers when each completed.
private final class ContinuousPinger: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let completions = NIOLockedValueBox<[NIODeadline]>([])
    private let channel = NIOLockedValueBox<(any Channel)?>(nil)

    static func start(port: Int, group: any EventLoopGroup) async throws -> ContinuousPinger {
        let pinger = ContinuousPinger()
        let channel = try await ClientBootstrap(group: group)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(pinger) }
            }
            .connect(host: "127.0.0.1", port: port).get()
        pinger.channel.withLockedValue { $0 = channel }
        try await channel.writeAndFlush(ByteBuffer(bytes: [1]))
        return pinger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let now = NIODeadline.now()
        self.completions.withLockedValue { $0.append(now) }
        context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(bytes: [1])), promise: nil)
    }

    /// The first completion after `moment`, waiting up to `timeout` for it.
    func firstRoundTrip(after moment: NIODeadline, within timeout: TimeAmount) async throws -> NIODeadline? {
        let deadline = NIODeadline.now() + timeout
        while NIODeadline.now() < deadline {
            if let found = self.completions.withLockedValue({ times in times.first { $0 > moment } }) {
                return found
            }
            try await Task.sleep(for: .milliseconds(5))
        }
        return nil
    }

    func stop() {
        self.channel.withLockedValue { $0 }?.close(promise: nil)
    }
}
