@testable import CulvertTransport
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Testing

/// A polling connection whose POST finds the connection forgotten (404) while its GET is in flight takes the
/// server's last words from that GET — the bytes that say why (a GOAWAY, in a session), then the close record — and
/// closes cleanly, instead of closing at once as "expired" and losing them. (A probe with no token sometimes
/// reported "the server no longer knows this connection" instead of the server's "no token given".)
@Suite struct HTTPClientLastWordsTests {
    @Test func aPOSTThatFindsTheConnectionForgottenWaitsForTheLastWordsInTheGETInFlight() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let server = try await ForgettingServer.start(group: group)
        let (received, error) = try await Self.sendAndAwaitTheClose(to: server, group: group)
        #expect(received == "the session ended: no token given")
        #expect(error == nil, "closed with \(error ?? "")")
        try await server.close()
    }

    /// When the GET in flight brings nothing, the connection closes as expired once the wait is over.
    @Test func aForgottenConnectionWhoseGETBringsNothingClosesAsExpired() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let server = try await ForgettingServer.start(group: group, answersTheHeldGET: false)
        let (received, error) = try await Self.sendAndAwaitTheClose(to: server, group: group)
        #expect(received == "")
        #expect(error?.contains("the server no longer knows this connection") == true, "closed with \(error ?? "no error")")
        try await server.close()
    }

    /// Opens a polling connection to `server`, sends a message once its GET is held (so that the POST's 404 comes
    /// while the GET is in flight), and returns what the connection delivered and the error it closed with.
    static func sendAndAwaitTheClose(to server: ForgettingServer, group: any EventLoopGroup) async throws -> (String, String?) {
        let loop = group.next()
        let transport = HTTPClientTransport(kind: .polling, options: TransportOptions())
        let connection = try await transport.connectBound(to: ServerEndpoint(host: "127.0.0.1", port: server.port), on: loop).get()
        return try await loop.flatSubmit {
            let recorder = CloseRecorder(promise: loop.makePromise())
            connection.value.start(delegate: recorder)
            server.getHeld.futureResult.hop(to: loop).assumeIsolated().whenSuccess {
                connection.value.send(ByteBuffer(string: "hello"))
            }
            return recorder.promise.futureResult
        }.get()
    }

    /// Records what a transport delivers and how it closes.
    final class CloseRecorder: TransportConnectionDelegate {
        let promise: EventLoopPromise<(String, String?)>
        var received = ""

        init(promise: EventLoopPromise<(String, String?)>) {
            self.promise = promise
        }

        func transport(_ transport: any TransportConnection, didReceive message: ByteBuffer) {
            self.received += String(buffer: message)
        }

        func transportDidReadComplete(_ transport: any TransportConnection) {}
        func transportWritabilityChanged(_ transport: any TransportConnection) {}

        func transportDidClose(_ transport: any TransportConnection, error: (any Error)?) {
            self.promise.succeed((self.received, error.map { "\($0)" }))
        }
    }

    /// A server that has just ended a connection's session: it answers `open`, holds the first GET, answers the
    /// first POST with 404 (it forgot the connection) and then the held GET with the session's last bytes and the
    /// close record.
    final class ForgettingServer: Sendable {
        private let listener: any Channel
        let getHeld: EventLoopPromise<Void>
        var port: Int { self.listener.localAddress!.port! }

        private init(listener: any Channel, getHeld: EventLoopPromise<Void>) {
            self.listener = listener
            self.getHeld = getHeld
        }

        static func start(group: any EventLoopGroup, answersTheHeldGET: Bool = true) async throws -> ForgettingServer {
            let getHeld = group.next().makePromise(of: Void.self)
            let heldGET = NIOLockedValueBox<(any Channel)?>(nil)
            let listener = try await ServerBootstrap(group: group)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                        try channel.pipeline.syncOperations.addHandler(
                            Script(heldGET: heldGET, getHeld: getHeld, answersTheHeldGET: answersTheHeldGET)
                        )
                    }
                }
                .bind(host: "127.0.0.1", port: 0).get()
            return ForgettingServer(listener: listener, getHeld: getHeld)
        }

        func close() async throws {
            self.getHeld.succeed()
            try await self.listener.close()
        }

        final class Script: ChannelInboundHandler, Sendable {
            typealias InboundIn = HTTPServerRequestPart
            let heldGET: NIOLockedValueBox<(any Channel)?>
            let getHeld: EventLoopPromise<Void>
            let answersTheHeldGET: Bool

            init(heldGET: NIOLockedValueBox<(any Channel)?>, getHeld: EventLoopPromise<Void>, answersTheHeldGET: Bool) {
                self.heldGET = heldGET
                self.getHeld = getHeld
                self.answersTheHeldGET = answersTheHeldGET
            }

            func channelRead(context: ChannelHandlerContext, data: NIOAny) {
                guard case .head(let head) = self.unwrapInboundIn(data) else { return }
                let channel = context.channel
                if head.uri.contains("/open") {
                    Self.answer(channel, status: .ok, body: ByteBuffer(string: String(repeating: "a", count: 32) + "\n"))
                } else if head.uri.contains("/down") {
                    self.heldGET.withLockedValue { $0 = channel }
                    self.getHeld.succeed()
                } else if head.uri.contains("/up") {
                    Self.answer(channel, status: .notFound, body: ByteBuffer(string: "no such connection\n"))
                    guard self.answersTheHeldGET, let held = self.heldGET.withLockedValue({ $0 }) else { return }
                    HTTPServerTransportConnection.respondEmpty(
                        channel: held, records: [.data(offset: 0, payload: ByteBuffer(string: "the session ended: no token given")), .close],
                        shape: .binary
                    )
                }
            }

            static func answer(_ channel: any Channel, status: HTTPResponseStatus, body: ByteBuffer) {
                var headers = HTTPHeaders()
                headers.add(name: "Content-Length", value: String(body.readableBytes))
                channel.write(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers)), promise: nil)
                channel.write(HTTPServerResponsePart.body(.byteBuffer(body)), promise: nil)
                channel.writeAndFlush(HTTPServerResponsePart.end(nil), promise: nil)
            }
        }
    }
}
