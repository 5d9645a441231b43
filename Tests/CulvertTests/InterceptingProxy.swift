import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

/// What a TLS-inspecting proxy can do, on loopback: it answers the client's TLS with a certificate of its own CA
/// (which the client was told to trust, as companies install theirs on every machine), opens its own TLS to the
/// server, and relays the bytes in between in the clear — recording them all, and, when told, altering the stream
/// from the server once the handshake is over. Faults beside the real TLS-inspecting squid, never instead of it.
final class InterceptingProxy: Sendable {
    /// Which way the changed stream goes.
    enum Direction: String, Sendable, CaseIterable {
        case fromServer, fromClient
    }

    /// A change to one stream, made to one of its SEALED frames (the CONNECT transport carries frames as they are,
    /// after the upgrade's head).
    enum Tamper: String, Sendable, CaseIterable {
        /// One bit of the frame's ciphertext flipped.
        case flipBit
        /// The frame left out.
        case drop
        /// The frame sent twice.
        case duplicate
        /// A made-up SEALED frame of the same length sent before it.
        case inject
    }

    private let channel: any Channel
    private let state: NIOLockedValueBox<State>

    private struct State {
        var seen: [UInt8] = []
        var tampered = false
    }

    var port: Int { self.channel.localAddress!.port! }
    /// Every byte it relayed, both ways, in the clear (what such a proxy could log).
    var seen: [UInt8] { self.state.withLockedValue { $0.seen } }
    /// Whether it made its change.
    var tampered: Bool { self.state.withLockedValue { $0.tampered } }

    private init(channel: any Channel, state: NIOLockedValueBox<State>) {
        self.channel = channel
        self.state = state
    }

    /// Intercepts TLS connections to 127.0.0.1:`upstreamPort` with `certificatePEM` and `keyPEM` (signed by the
    /// CA the client trusts); with `tamper`, alters SEALED frame number `sealedFrame` (from 0) of the stream that
    /// goes `direction`.
    static func start(
        upstreamPort: Int, certificatePEM: String, keyPEM: String, tamper: Tamper? = nil, sealedFrame: Int = 3,
        direction: Direction = .fromServer, group: any EventLoopGroup
    ) async throws -> InterceptingProxy {
        let serverContext = try NIOSSLContext(
            configuration: .makeServerConfiguration(
                certificateChain: try NIOSSLCertificate.fromPEMBytes(Array(certificatePEM.utf8)).map { .certificate($0) },
                privateKey: .privateKey(try NIOSSLPrivateKey(bytes: Array(keyPEM.utf8), format: .pem))
            )
        )
        var upstreamConfiguration = TLSConfiguration.makeClientConfiguration()
        // As an inspecting proxy that is told to trust the server (its name is checked nowhere here).
        upstreamConfiguration.certificateVerification = .none
        let upstreamContext = try NIOSSLContext(configuration: upstreamConfiguration)
        let state = NIOLockedValueBox(State())
        let record: @Sendable (ByteBuffer) -> Void = { bytes in state.withLockedValue { $0.seen += bytes.readableBytesView } }
        let markTampered: @Sendable () -> Void = { state.withLockedValue { $0.tampered = true } }
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.autoRead, value: false)
            .childChannelInitializer { client in
                client.eventLoop.makeCompletedFuture {
                    try client.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: serverContext))
                }.flatMap {
                    ClientBootstrap(group: client.eventLoop)
                        .channelInitializer { upstream in
                            upstream.eventLoop.makeCompletedFuture {
                                try upstream.pipeline.syncOperations.addHandler(
                                    try NIOSSLClientHandler(context: upstreamContext, serverHostname: nil)
                                )
                            }
                        }
                        .connect(host: "127.0.0.1", port: upstreamPort)
                        .flatMapThrowing { upstream in
                            let tamperer = tamper.map { SealedFrameTamperer($0, at: sealedFrame, onTamper: markTampered) }
                            let clientToServer = InterceptedStream(record: record, tamper: direction == .fromClient ? tamperer : nil)
                            let serverToClient = InterceptedStream(record: record, tamper: direction == .fromServer ? tamperer : nil)
                            try client.pipeline.syncOperations.addHandler(clientToServer.reader(writingTo: upstream))
                            try upstream.pipeline.syncOperations.addHandler(serverToClient.reader(writingTo: client))
                            client.setOption(.autoRead, value: true).whenComplete { _ in }
                        }
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        return InterceptingProxy(channel: channel, state: state)
    }

    func close() async throws {
        try await self.channel.close()
    }
}

/// One direction of an intercepted connection, confined to its loop: what it reads is recorded, changed if told,
/// and written to the other side.
private final class InterceptedStream {
    private let record: @Sendable (ByteBuffer) -> Void
    private var tamper: SealedFrameTamperer?

    init(record: @escaping @Sendable (ByteBuffer) -> Void, tamper: SealedFrameTamperer? = nil) {
        self.record = record
        self.tamper = tamper
    }

    /// The handler, on the channel read from, that writes to `destination`.
    func reader(writingTo destination: any Channel) -> some ChannelInboundHandler {
        Reader(stream: self, destination: destination)
    }

    private final class Reader: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let stream: InterceptedStream
        let destination: any Channel

        init(stream: InterceptedStream, destination: any Channel) {
            self.stream = stream
            self.destination = destination
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let bytes = self.unwrapInboundIn(data)
            self.stream.record(bytes)
            if self.stream.tamper == nil {
                self.destination.writeAndFlush(bytes, promise: nil)
                return
            }
            for piece in self.stream.tamper!.pass(bytes) { self.destination.write(piece, promise: nil) }
            self.destination.flush()
        }

        func channelInactive(context: ChannelHandlerContext) {
            self.destination.close(promise: nil)
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }
}

/// Finds the SEALED frames in a stream of Culvert frames that follows an HTTP head, and changes one of them.
struct SealedFrameTamperer {
    private let tamper: InterceptingProxy.Tamper
    private let target: Int
    private let onTamper: @Sendable () -> Void
    private var headDone = false
    private var pending = ByteBuffer()
    private var sealedSeen = 0

    init(_ tamper: InterceptingProxy.Tamper, at target: Int, onTamper: @escaping @Sendable () -> Void) {
        self.tamper = tamper
        self.target = target
        self.onTamper = onTamper
    }

    /// What to send on for `bytes`: whole frames, one of them changed when its turn comes.
    mutating func pass(_ bytes: ByteBuffer) -> [ByteBuffer] {
        var bytes = bytes
        self.pending.writeBuffer(&bytes)
        var out: [ByteBuffer] = []
        if !self.headDone {
            guard let end = self.pending.readableBytesView.firstRange(of: Array("\r\n\r\n".utf8)) else { return [] }
            let headLength = end.upperBound - self.pending.readerIndex
            out.append(self.pending.readSlice(length: headLength)!)
            self.headDone = true
        }
        while self.pending.readableBytes >= 10 {
            let length = 10 + Int(self.pending.getInteger(at: self.pending.readerIndex + 6, as: UInt32.self)!)
            guard self.pending.readableBytes >= length else { break }
            var frame = self.pending.readSlice(length: length)!
            guard frame.getInteger(at: frame.readerIndex, as: UInt8.self) == 0x30 else {
                out.append(frame)
                continue
            }
            defer { self.sealedSeen += 1 }
            guard self.sealedSeen == self.target else {
                out.append(frame)
                continue
            }
            self.onTamper()
            switch self.tamper {
            case .flipBit:
                let offset = frame.readerIndex + 10 + (length - 10) / 2
                frame.setInteger(frame.getInteger(at: offset, as: UInt8.self)! ^ 0x04, at: offset)
                out.append(frame)
            case .drop:
                break
            case .duplicate:
                out.append(frame)
                out.append(frame)
            case .inject:
                var madeUp = ByteBuffer()
                madeUp.writeBytes(frame.getBytes(at: frame.readerIndex, length: 10)!)
                madeUp.writeBytes((0..<(length - 10)).map { _ in UInt8.random(in: 0...255) })
                out.append(madeUp)
                out.append(frame)
            }
        }
        self.pending.discardReadBytes()
        return out
    }
}
