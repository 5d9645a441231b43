import CulvertTransport
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

/// Proxies reuse keep-alive connections to the server, also for upgrade requests (squid does): the server must
/// upgrade on any request of a connection, not only on its first.
@Suite struct TransportServerKeepAliveTests {
    @Test(arguments: [("ws", "websocket"), ("raw", "culvert")])
    func anUpgradeAfterAnotherRequestOnTheSameConnectionIsAccepted(endpoint: String, upgrade: String) async throws {
        let (server, channel, received, connections) = try await Self.serverAndConnection()
        // A plain request first (a proxy's earlier request on the pooled connection), then the upgrade.
        try await channel.writeAndFlush(ByteBuffer(string: "GET /culvert/nothing HTTP/1.1\r\nHost: server\r\n\r\n"))
        try await Self.waitFor(received) { $0.contains("404") && $0.contains("no such endpoint") }
        var request = "GET /culvert/\(endpoint) HTTP/1.1\r\nHost: server\r\nUpgrade: \(upgrade)\r\nConnection: upgrade\r\n"
        if upgrade == "websocket" { request += "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" }
        try await channel.writeAndFlush(ByteBuffer(string: request + "\r\n"))
        try await Self.waitFor(received) { $0.contains("101 Switching Protocols") }
        try await Self.waitFor(received) { _ in connections.withLockedValue { $0 } == 1 }
        try? await channel.close()
        try await server.close().get()
    }

    /// A request with `Connection: close` (tinyproxy sends every request so, then relays the next one on the same
    /// connection) is answered with `Connection: close` and the connection closed: the request behind it is never
    /// read by a parser that has seen the end, which answered it 400.
    @Test(.timeLimit(.minutes(1))) func aRequestWithConnectionCloseEndsTheConnectionAfterItsAnswer() async throws {
        let (server, channel, received, _) = try await Self.serverAndConnection()
        try await channel.writeAndFlush(ByteBuffer(string:
            "GET /culvert/nothing HTTP/1.1\r\nHost: server\r\nConnection: close\r\n\r\n"
            + "GET /culvert/other HTTP/1.1\r\nHost: server\r\n\r\n"))
        try await channel.closeFuture.get()
        let text = received.withLockedValue { $0 }
        #expect(text.components(separatedBy: "HTTP/1.1 ").count == 2, "expected one answer, got: \(text)")
        #expect(text.contains("404"))
        #expect(text.lowercased().contains("connection: close"))
        #expect(!text.contains("400"))
        try await server.close().get()
    }

    /// Only a GET upgrades (RFC 6455 §4.1): a POST with upgrade headers is an ordinary request, answered without a
    /// 101 and without a transport connection.
    @Test(.timeLimit(.minutes(1)), arguments: [("ws", "websocket"), ("raw", "culvert")])
    func aPostWithUpgradeHeadersIsNotUpgraded(endpoint: String, upgrade: String) async throws {
        let (server, channel, received, connections) = try await Self.serverAndConnection()
        var request = "POST /culvert/\(endpoint) HTTP/1.1\r\nHost: server\r\nUpgrade: \(upgrade)\r\nConnection: upgrade, close\r\n"
            + "Content-Length: 0\r\n"
        if upgrade == "websocket" { request += "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" }
        try await channel.writeAndFlush(ByteBuffer(string: request + "\r\n"))
        try await channel.closeFuture.get()
        let text = received.withLockedValue { $0 }
        #expect(!text.contains("101"), "a POST was upgraded: \(text)")
        #expect(text.hasPrefix("HTTP/1.1 4"))
        #expect(connections.withLockedValue { $0 } == 0)
        try await server.close().get()
    }

    /// A transport server that counts the transport connections it gets (and closes them), and a TCP connection
    /// to it whose every received byte collects in `received`.
    private static func serverAndConnection() async throws -> (
        server: TransportServer, channel: any Channel, received: NIOLockedValueBox<String>, connections: NIOLockedValueBox<Int>
    ) {
        let group = MultiThreadedEventLoopGroup.singleton
        let connections = NIOLockedValueBox(0)
        let server = try await TransportServer.bind(
            configuration: .init(host: "127.0.0.1", port: 0), group: group,
            onConnection: { connection in
                connections.withLockedValue { $0 += 1 }
                connection.close()
            }
        ).get()
        let received = NIOLockedValueBox("")
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(TextCollector(received)) }
            }
            .connect(host: "127.0.0.1", port: server.localAddress!.port!).get()
        return (server, channel, received, connections)
    }

    private static func waitFor(_ text: NIOLockedValueBox<String>, _ condition: @Sendable (String) -> Bool) async throws {
        for _ in 0..<200 {
            if condition(text.withLockedValue { $0 }) { return }
            try await Task.sleep(for: .milliseconds(10))
        }
        Issue.record("not seen within 2 s; received: \(text.withLockedValue { $0 })")
    }
}

/// Appends everything read to a shared string.
private final class TextCollector: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let text: NIOLockedValueBox<String>

    init(_ text: NIOLockedValueBox<String>) { self.text = text }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = self.unwrapInboundIn(data)
        self.text.withLockedValue { $0 += String(buffer: buffer) }
    }
}
