import ArgumentParser
import Culvert
import CulvertCore
import CulvertTools
import CulvertTransport
import Foundation
import Logging
import NIOCore
import NIOPosix

/// `culvert demo`: server, client and an echo target in one process on loopback, with data pushed through and
/// verified.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run server, client and an echo target on loopback, push data through the tunnel and verify it."
    )

    @Option(help: "MiB to send through each stream (and receive back).")
    var mib: Int = 16

    @Option(help: "Concurrent streams over the one tunnel connection.")
    var streams: Int = 4

    @Option(help: "Transport: auto (probe all, use the best that works), websocket, connect, chunked or polling.")
    var transport: TransportChoice = .auto

    @Flag(help: "Put a proxy in the path that strips Upgrade and refuses CONNECT (the test proxy), to show auto at work.")
    var throughFaultyProxy = false

    @OptionGroup var loggingOptions: LoggingOptions

    func run() async throws {
        HeapTuning.apply()
        let logger = try self.loggingOptions.makeLogger(label: "culvert.demo", defaultLevel: .warning)
        guard self.mib > 0, self.streams > 0 else { throw ValidationError("--mib and --streams must be positive") }
        let group = MultiThreadedEventLoopGroup.singleton
        let token = HandshakeStateMachine.systemRandomBytes(16).lowercaseHex

        let echo = try await EchoServer.start(group: group)
        let server = try await TunnelServer.start(
            configuration: .init(
                listenHost: "127.0.0.1",
                listenPort: 0,
                session: SessionConfiguration(token: token),
                allowlist: Allowlist(entries: [try Allowlist.Entry(parsing: "127.0.0.1:\(echo.port)")])
            ),
            group: group,
            logger: logger
        )
        let serverPort = server.localAddress!.port!
        let endpoint = ServerEndpoint(host: "127.0.0.1", port: serverPort)
        var proxy: FaultProxy?
        if self.throughFaultyProxy {
            proxy = try await FaultProxy.start(configuration: .init(faults: [.stripUpgrade, .refuseConnect]), group: group)
        }
        let proxyConfiguration = proxy.map { ProxyConfiguration(host: "127.0.0.1", port: $0.port) }
        print("culvert demo")
        if let proxyConfiguration {
            print("  proxy in path   \(proxyConfiguration)  (strips Upgrade, refuses CONNECT: like many corporate proxies)")
        }
        let kind: TransportKind
        if self.transport == .auto {
            let results = await TransportNegotiator.probe(
                server: endpoint, options: TransportOptions(proxy: proxyConfiguration, logger: logger),
                session: SessionConfiguration(token: token), group: group, logger: logger
            )
            for result in results {
                let outcome = result.works
                    ? String(format: "works, rtt %.1f ms", result.roundTripMilliseconds ?? 0)
                    : "fails: \(result.failure?.phrase ?? "failed")"
                print("  probe           \(result.transport.rawValue.padding(toLength: 10, withPad: " ", startingAt: 0)) \(outcome)")
            }
            guard let choice = TransportNegotiator.choice(results) else { fail("no transport gets through") }
            kind = choice
        } else {
            kind = self.transport.resolvedKind()
        }
        let client: TunnelClient
        do {
            client = try await TunnelClient.connect(
                configuration: .init(
                    server: endpoint,
                    transport: kind,
                    transportOptions: TransportOptions(proxy: proxyConfiguration),
                    session: SessionConfiguration(token: token),
                    forwards: [ForwardSpec(bindPort: 0, target: .init(host: "127.0.0.1", port: echo.port))]
                ),
                group: group,
                logger: logger
            )
        } catch {
            fail("\(error)")
        }
        let localPort = client.listenerAddresses[0].port!
        print("  echo target     127.0.0.1:\(echo.port)")
        print("  culvert server  http://127.0.0.1:\(serverPort)/culvert  (token auth, --allow 127.0.0.1:\(echo.port))")
        print("  culvert client  -L 127.0.0.1:\(localPort):127.0.0.1:\(echo.port)  over \(kind)")
        print("  pushing \(self.mib) MiB each way through each of \(self.streams) streams …")

        let bytesPerStream = self.mib * 1024 * 1024
        let start = ContinuousClock.now
        let results = try await withThrowingTaskGroup(of: TransferClient.Result.self) { tasks in
            for index in 0..<self.streams {
                tasks.addTask {
                    try await TransferClient.echoTransfer(
                        host: "127.0.0.1", port: localPort, byteCount: bytesPerStream, seed: UInt64(index + 1), group: group
                    )
                }
            }
            var results: [TransferClient.Result] = []
            for try await result in tasks { results.append(result) }
            return results
        }
        let seconds = (ContinuousClock.now - start).seconds
        let sent = results.reduce(0) { $0 + $1.bytesSent }
        let received = results.reduce(0) { $0 + $1.bytesReceived }
        let allMatch = results.allSatisfy(\.digestsMatch)
        let mibPerSecond = Double(sent) / 1_048_576 / seconds
        let transportKind = try? await client.session.snapshot().transportKind
        print("  transport       \(transportKind.map { "\($0)" } ?? "?") (one session; the server accepted \(server.acceptedConnections) TCP connections in all)")
        print("  sent            \(formatMiB(sent)) up, \(formatMiB(received)) back, in \(String(format: "%.2f", seconds)) s")
        print("  throughput      \(String(format: "%.1f", mibPerSecond)) MiB/s each way")
        for (index, result) in results.enumerated() {
            print("  stream \(index + 1)        sha256 \(result.sentDigest.prefix(16))… \(result.digestsMatch ? "OK" : "MISMATCH (received \(result.receivedDigest.prefix(16))…)")")
        }
        await client.shutdown(gracePeriod: .seconds(1))
        await server.shutdown(gracePeriod: .seconds(1))
        try? await proxy?.close()
        try? await echo.close()
        guard allMatch else {
            fail("checksum mismatch: the tunnel corrupted or lost data")
        }
        print("  checksum OK: every byte came back intact")
    }
}

func formatMiB(_ bytes: Int) -> String {
    String(format: "%.1f MiB", Double(bytes) / 1_048_576)
}
