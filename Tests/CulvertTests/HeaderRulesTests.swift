import Culvert
import CulvertCore
import CulvertTools
import CulvertTransport
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Testing

/// A real proxy that passes on only the request headers it knows: squid from Debian with its defaults plus
/// `request_header_access Other deny all` (`fixtures/proxies/squid-forward-header-rules.conf`), as some company
/// proxies have it. It strips culvert's own headers (the
/// connection id and the signature of chunked and polling requests) and keeps cookies, where the same fields go too
/// (``CulvertRequestField``): the chunked and polling transports work through it, and `auto` settles on chunked.
@Suite(.serialized, .timeLimit(.minutes(2))) struct HeaderRulesTests {
    func startSquid() async throws -> RealProxy {
        try await RealProxy.start(.squid, configuration: fixturesDirectory() + "/proxies/squid-forward-header-rules.conf")
    }

    /// The check that the proxy is what these tests need: a request through it reaches its origin without its
    /// `Culvert-` headers and with its cookie.
    @Test func squidWithHeaderRulesStripsCulvertsHeadersAndKeepsCookies() async throws {
        let squid = try await self.startSquid()
        defer { squid.stop() }
        let origin = try await HeaderListingServer.start(group: TunnelHarness.group)
        defer { origin.close() }
        let listed = ChildProcess.run("/usr/bin/curl", [
            "-sS", "--max-time", "10", "-x", "http://127.0.0.1:\(squid.port)",
            "-H", "Culvert-Auth: 1.abc", "-H", "Culvert-Connection: 00ff", "-H", "Cookie: culvert_auth=1.abc",
            "http://127.0.0.1:\(origin.port)/up?o=0",
        ]) ?? "curl did not start"
        #expect(listed.contains("cookie: culvert_auth=1.abc"), "\(listed)")
        #expect(!listed.contains("culvert-auth"), "\(listed)")
        #expect(!listed.contains("culvert-connection"), "\(listed)")
    }

    @Test(arguments: [TransportKind.chunked, .polling])
    func chunkedAndPollingCarryDataThroughAProxyThatStripsUnknownHeaders(transport: TransportKind) async throws {
        let group = TunnelHarness.group
        let echo = try await EchoServer.start(group: group)
        let server = try await TunnelHarness.startServer(allow: ["127.0.0.1:\(echo.port)"])
        let squid = try await self.startSquid()
        defer { squid.stop() }
        let client = try await TunnelHarness.connectClient(
            serverPort: server.localAddress!.port!, targets: [echo.port], transport: transport,
            proxy: ProxyConfiguration(host: "127.0.0.1", port: squid.port)
        )
        // Enough for many signed requests each way.
        let transfer = try await TransferClient.echoTransfer(
            host: "127.0.0.1", port: client.listenerAddresses[0].port!, byteCount: 512 << 10, seed: 11, group: group
        )
        #expect(transfer.digestsMatch)
        #expect(transfer.bytesReceived == 512 << 10)
        let session = client.session
        let snapshot = try await session.snapshot()
        #expect(snapshot.resumptions == 0, "a request was refused and the session had to resume")
        #expect(snapshot.transportKind == transport)
        await client.shutdown(gracePeriod: .zero)
        await server.shutdown(gracePeriod: .zero)
        try await echo.close()
    }

    @Test func autoSettlesOnChunkedThroughAProxyThatStripsUnknownHeaders() async throws {
        let group = TunnelHarness.group
        let server = try await TunnelHarness.startServer(allow: [])
        let squid = try await self.startSquid()
        defer { squid.stop() }
        let results = await TransportNegotiator.probe(
            server: ServerEndpoint(host: "127.0.0.1", port: server.localAddress!.port!),
            options: TransportOptions(proxy: ProxyConfiguration(host: "127.0.0.1", port: squid.port), logger: TunnelHarness.logger),
            session: SessionConfiguration(token: "test-token"), group: group, logger: TunnelHarness.logger
        )
        let byKind = Dictionary(uniqueKeysWithValues: results.map { ($0.transport, $0) })
        #expect(byKind[.websocket]?.failure == .upgradeStripped)
        #expect(byKind[.connect]?.failure == .connectRefused)
        #expect(byKind[.chunked]?.works == true, "\(byKind[.chunked]?.detail ?? "")")
        #expect(byKind[.polling]?.works == true, "\(byKind[.polling]?.detail ?? "")")
        #expect(TransportNegotiator.choice(results) == .chunked)
        await server.shutdown(gracePeriod: .zero)
    }
}

/// An HTTP origin that answers every request with the names and values of the headers it arrived with, one
/// `name: value` per line, names in lower case.
final class HeaderListingServer: Sendable {
    private let channel: any Channel
    var port: Int { self.channel.localAddress!.port! }

    private init(channel: any Channel) { self.channel = channel }

    static func start(group: any EventLoopGroup) async throws -> HeaderListingServer {
        let channel = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(HeaderListingHandler())
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return HeaderListingServer(channel: channel)
    }

    func close() { self.channel.close(promise: nil) }
}

private final class HeaderListingHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private var listing = ""

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.listing = head.headers.map { "\($0.name.lowercased()): \($0.value)\n" }.joined()
        case .body:
            break
        case .end:
            var body = context.channel.allocator.buffer(capacity: self.listing.utf8.count)
            body.writeString(self.listing)
            var headers = HTTPHeaders()
            headers.add(name: "Content-Length", value: "\(body.readableBytes)")
            headers.add(name: "Content-Type", value: "text/plain")
            context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
            context.write(self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
        }
    }
}
