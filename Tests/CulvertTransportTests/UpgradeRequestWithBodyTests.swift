@testable import CulvertTransport
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

/// An upgrade request has no body. One that announces a body is not upgraded: NIO's upgrade handler, having accepted
/// a head, keeps itself and the connection's whole pipeline alive until the request ends, so a body that never ends
/// (or fails to parse, as the fuzzer found with `Transfer-Encoding: chun(ed`) leaked every such connection.
@Suite struct UpgradeRequestWithBodyTests {
    static let upgrades: [(endpoint: String, headers: String)] = [
        ("ws", "Upgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"),
        ("raw", "Upgrade: culvert\r\nConnection: upgrade\r\n"),
    ]

    @Test(arguments: Self.upgrades, ["Content-Length: 10\r\n\r\nabc", "Transfer-Encoding: chunked\r\n\r\n5\r\nab", "Transfer-Encoding: chun(ed\r\n\r\n"])
    func anUpgradeRequestAnnouncingABodyIsNotUpgradedAndItsConnectionIsFreedWhenItCloses(
        upgrade: (endpoint: String, headers: String), body: String
    ) throws {
        weak var upgradeHandler: HTTPServerUpgradeHandler?
        weak var requestHandler: HTTPTransportRequestHandler?
        var answer = ""
        var upgraded = false
        do {
            let channel = EmbeddedChannel()
            try TransportServer.configureConnection(
                channel, configuration: .init(host: "127.0.0.1", port: 0),
                registry: HTTPConnectionRegistry(settings: .init()), onConnection: { $0.close() }
            )
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 9)).wait()
            upgradeHandler = try channel.pipeline.syncOperations.handler(type: HTTPServerUpgradeHandler.self)
            requestHandler = try channel.pipeline.syncOperations.handler(type: HTTPTransportRequestHandler.self)
            // The body never ends (or cannot be parsed); then the peer goes away.
            _ = try? channel.writeInbound(ByteBuffer(string: "GET /culvert/\(upgrade.endpoint) HTTP/1.1\r\nHost: s\r\n" + upgrade.headers + body))
            while let part = try? channel.readOutbound(as: ByteBuffer.self) { answer += String(buffer: part) }
            upgraded = (try? channel.pipeline.syncOperations.handler(type: ChannelTransportConnection.self)) != nil
            _ = try? channel.finish(acceptAlreadyClosed: true)
        }
        #expect(!answer.contains(" 101 "), "an upgrade request with a body was upgraded: \(answer)")
        #expect(!upgraded)
        #expect(upgradeHandler == nil, "the upgrade handler outlived its closed connection (and holds its pipeline)")
        #expect(requestHandler == nil, "the request handler outlived its closed connection")
    }
}
