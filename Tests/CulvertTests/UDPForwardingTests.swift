@testable import Culvert
import CulvertCore
import CulvertTools
import CulvertTransport
import Foundation
import NIOCore
import NIOPosix
import Testing

/// UDP through the tunnel (`-L …/udp`, `-R …/udp`): dig asks dnsmasq, both from Debian, and every datagram's
/// boundaries and bytes arrive as sent.
@Suite(.serialized, .timeLimit(.minutes(2))) struct UDPForwardingTests {
    static func startDNS() async throws -> ThrowawayDNSServer {
        try await ThrowawayDNSServer.start(
            port: try await RawConnection.unusedPort(group: TunnelHarness.group), configuration: fixturesDirectory() + "/targets/dnsmasq.conf"
        )
    }

    /// A server allowing `allow` (and reverse listeners on `allowReverse`), and a client with `forwards` and `reverse`.
    static func start(
        allow: [String], allowReverse: [String] = [], forwards: [ForwardSpec], reverse: [ForwardSpec] = [], udpTimeout: TimeAmount = .seconds(30)
    ) async throws -> TunnelHarness {
        var serverConfiguration = TunnelServer.Configuration(
            listenHost: "127.0.0.1", listenPort: 0,
            session: SessionConfiguration(token: "test-token", authenticationRequired: true),
            allowlist: Allowlist(entries: try allow.map { try Allowlist.Entry(parsing: $0) })
        )
        serverConfiguration.reverseAllowlist = ReverseAllowlist(entries: try allowReverse.map { try ReverseAllowlist.Entry(parsing: $0) })
        let server = try await TunnelServer.start(configuration: serverConfiguration, group: TunnelHarness.group, logger: TunnelHarness.logger)
        var configuration = TunnelClient.Configuration(
            server: ServerEndpoint(host: "127.0.0.1", port: server.localAddress!.port!, pathPrefix: "/culvert"),
            transportOptions: TransportOptions(logger: TunnelHarness.logger),
            session: SessionConfiguration(token: "test-token"),
            forwards: forwards
        )
        configuration.reverseForwards = reverse
        configuration.udpTimeout = udpTimeout
        do {
            let client = try await TunnelClient.connect(configuration: configuration, group: TunnelHarness.group, logger: TunnelHarness.logger)
            return TunnelHarness(server: server, client: client)
        } catch {
            await server.shutdown(gracePeriod: .zero)
            throw error
        }
    }

    static func dig(port: Int, _ arguments: [String]) -> String {
        ChildProcess.run("/usr/bin/dig", ["@127.0.0.1", "-p", "\(port)", "+tries=1", "+time=5"] + arguments) ?? "dig did not start"
    }

    /// `count` UDP ports on 127.0.0.1 that were all free at once (bound together, then released).
    static func distinctUDPPorts(_ count: Int) async throws -> [Int] {
        var channels: [any Channel] = []
        for _ in 0..<count {
            channels.append(try await DatagramBootstrap(group: TunnelHarness.group).bind(host: "127.0.0.1", port: 0).get())
        }
        let ports = channels.compactMap { $0.localAddress?.port }
        for channel in channels { try await channel.close() }
        return ports
    }

    static func udp(_ port: Int) -> ForwardSpec {
        ForwardSpec(bindPort: 0, target: TargetAddress(host: "127.0.0.1", port: port, transport: .udp))
    }

    @Test func digGetsItsAnswersThroughAUDPForward() async throws {
        let dns = try await Self.startDNS()
        defer { dns.stop() }
        let tunnel = try await Self.start(allow: ["127.0.0.1:\(dns.port)"], forwards: [Self.udp(dns.port)])
        let port = tunnel.localPort()
        let address = Self.dig(port: port, ["+short", "www.culvert.test"])
        let text = Self.dig(port: port, ["+short", "TXT", "big.culvert.test"])
        await tunnel.stop()
        #expect(address == "10.1.2.3\n")
        #expect(text == "\"\(String(repeating: "culvert", count: 30))\"\n")
    }

    @Test func manyClientsEachAFlowOfItsOwnAllGetTheirAnswers() async throws {
        let dns = try await Self.startDNS()
        defer { dns.stop() }
        let tunnel = try await Self.start(allow: ["127.0.0.1:\(dns.port)"], forwards: [Self.udp(dns.port)])
        let port = tunnel.localPort()
        // Each dig sends from a source port of its own (chosen here: the kernel may give a later dig the port of one
        // that has finished, which would then share its flow): a flow, and a stream, each.
        let sources = try await Self.distinctUDPPorts(12)
        let answers = await withTaskGroup(of: String.self) { group in
            for (index, source) in sources.enumerated() {
                group.addTask { Self.dig(port: port, ["-b", "127.0.0.1#\(source)", "+short", "host\(index).culvert.test"]) }
            }
            return await group.reduce(into: [String]()) { $0.append($1) }
        }
        let streams = try await tunnel.client.session.submit { $0.statistics.streamsOpened }.get()
        await tunnel.stop()
        #expect(answers == Array(repeating: "10.1.2.3\n", count: 12))
        #expect(streams == 12)
    }

    @Test func datagramBoundariesAndBytesArriveAsSentUpToTheLargestUDPAllows() async throws {
        let echo = try await DatagramBootstrap(group: TunnelHarness.group)
            .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 65_536))
            .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(UDPEcho()) } }
            .bind(host: "127.0.0.1", port: 0).get()
        let tunnel = try await Self.start(allow: ["127.0.0.1:\(echo.localAddress!.port!)"], forwards: [Self.udp(echo.localAddress!.port!)])
        let sizes = [1, 512, 1400, 9000, 65_507]
        let replies = try await UDPExchange.send(sizes.map { size in (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ size) } }, to: tunnel.localPort())
        await tunnel.stop()
        try await echo.close()
        #expect(replies.map(\.count) == sizes)
        // Compared by digest: a failure must not print 70 KiB of bytes.
        #expect(replies.map { SHA256Digest.hex($0) } == sizes.map { size in SHA256Digest.hex((0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ size) }) })
    }

    @Test func aFlowWithoutDatagramsForTheUDPTimeoutEndsItsStreamAndTheNextDatagramOpensANewOne() async throws {
        let echo = try await DatagramBootstrap(group: TunnelHarness.group)
            .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(UDPEcho()) } }
            .bind(host: "127.0.0.1", port: 0).get()
        let tunnel = try await Self.start(
            allow: ["127.0.0.1:\(echo.localAddress!.port!)"], forwards: [Self.udp(echo.localAddress!.port!)], udpTimeout: .seconds(1)
        )
        let session = tunnel.client.session
        let first = try await UDPExchange.send([[1, 2, 3]], to: tunnel.localPort())
        // The flow idles out 1 s after its last datagram: its stream ends (awaited, with a deadline of 10 s).
        _ = await tunnel.client.changes.wait(timeout: .seconds(10)) { await session.onLoop { $0.streamCount == 0 } }
        let streamsAfterIdle = try await session.submit { $0.streamCount }.get()
        let second = try await UDPExchange.send([[4, 5]], to: tunnel.localPort())
        let opened = try await session.submit { $0.statistics.streamsOpened }.get()
        await tunnel.stop()
        try await echo.close()
        #expect(first == [[1, 2, 3]] && second == [[4, 5]])
        #expect(streamsAfterIdle == 0)
        #expect(opened == 2)
    }

    @Test func aUDPTargetTheServerDoesNotAllowIsRefused() async throws {
        let dns = try await Self.startDNS()
        defer { dns.stop() }
        let tunnel = try await Self.start(allow: ["127.0.0.1:1"], forwards: [Self.udp(dns.port)])
        let answer = Self.dig(port: tunnel.localPort(), ["+short", "+time=1", "www.culvert.test"])
        let refused = try await tunnel.client.session.submit { $0.statistics.streamsRefused }.get()
        await tunnel.stop()
        #expect(!answer.contains("10.1.2.3"))
        #expect(refused >= 1)
    }

    @Test func aReverseUDPForwardLetsDigOnTheServersSideAskADNSServerOnTheClientsSide() async throws {
        let dns = try await Self.startDNS()
        defer { dns.stop() }
        let reversePort = try await RawConnection.unusedPort(group: TunnelHarness.group)
        let tunnel = try await Self.start(
            allow: [], allowReverse: ["\(reversePort)"], forwards: [],
            reverse: [ForwardSpec(bindPort: reversePort, target: TargetAddress(host: "127.0.0.1", port: dns.port, transport: .udp))]
        )
        let answers = try await tunnel.client.reverseListenersAnswered.get()
        let address = Self.dig(port: reversePort, ["+short", "reverse.culvert.test"])
        await tunnel.stop()
        #expect(answers == [.listening(port: reversePort)])
        #expect(address == "10.1.2.3\n")
    }
}

/// Writes back every datagram it gets, to its sender.
final class UDPEcho: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.writeAndFlush(data, promise: nil)
    }
}

/// Sends datagrams one at a time from one socket and collects each reply before the next.
enum UDPExchange {
    static func send(_ datagrams: [[UInt8]], to port: Int) async throws -> [[UInt8]] {
        let channel = try await DatagramBootstrap(group: TunnelHarness.group)
            .channelOption(.socketOption(.so_rcvbuf), value: 1 << 20)
            .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 65_536))
            .bind(host: "127.0.0.1", port: 0)
            .flatMapThrowing { channel in
                try NIOAsyncChannel<AddressedEnvelope<ByteBuffer>, AddressedEnvelope<ByteBuffer>>(wrappingChannelSynchronously: channel)
            }.get()
        let target = try SocketAddress(ipAddress: "127.0.0.1", port: port)
        return try await channel.executeThenClose { inbound, outbound in
            var replies: [[UInt8]] = []
            var iterator = inbound.makeAsyncIterator()
            for datagram in datagrams {
                try await outbound.write(AddressedEnvelope(remoteAddress: target, data: ByteBuffer(bytes: datagram)))
                // UDP may lose a datagram: a reply that does not come within 10 s fails the exchange, not the run.
                let timeout = channel.channel.eventLoop.scheduleTask(in: .seconds(10)) { channel.channel.close(promise: nil) }
                defer { timeout.cancel() }
                guard let reply = try await iterator.next() else {
                    throw RawConnection.Failure(description: "no reply to a datagram of \(datagram.count) bytes within 10 s")
                }
                replies.append(Array(reply.data.readableBytesView))
            }
            return replies
        }
    }
}
