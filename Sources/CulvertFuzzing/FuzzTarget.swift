import CulvertCore
@_spi(Fuzzing) import CulvertTransport
import NIOCore
import NIOEmbedded

/// The fuzz targets: each takes arbitrary bytes, must never crash, hang or grow without bound, and checks what must
/// hold for any input (a decoded frame or record encodes back to the same bytes). `culvert-fuzz` in `Fuzz/` runs them
/// under libFuzzer; `FuzzRegressionTests` replays every input kept in `fixtures/fuzz/`.
public enum FuzzTarget: String, CaseIterable, Sendable {
    /// The session frame decoder, fed in pieces.
    case frameDecoder = "frame-decoder"
    /// The handshake: frames decoded from the input driven into a server's and a client's handshake state machine.
    case handshake
    /// The server's HTTP request handling (every transport's entry: upgrades, open, down, up, probe) on an
    /// `EmbeddedChannel`.
    case httpServer = "http-server"
    /// The chunked and polling transports' record codec, on binary and on text-shaped bodies.
    case httpRecords = "http-records"
    /// The WebSocket transport's frame parser and writer, and its handler on a server's or a client's connection.
    case webSocketFrames = "websocket-frames"

    /// Runs the target on `bytes`.
    public func run(_ bytes: [UInt8]) {
        switch self {
        case .frameDecoder: Self.frameDecoder(bytes)
        case .handshake: Self.handshake(bytes)
        case .httpServer: Self.httpServer(bytes)
        case .httpRecords:
            // The first byte picks how the body is cut into pieces (its low 7 bits) and its shape (its high bit).
            let pieceLength = Int((bytes.first ?? 0) & 0x7F) + 1
            if (bytes.first ?? 0) & 0x80 == 0 {
                _ = HTTPTransportRecordFuzzing.decodeAndReencode(Array(bytes.dropFirst()), pieceLength: pieceLength)
            } else {
                _ = HTTPTransportRecordFuzzing.decodeTextBody(Array(bytes.dropFirst()), pieceLength: pieceLength)
            }
        case .webSocketFrames: Self.webSocketFrames(bytes)
        }
    }

    /// Frames decoded from `bytes` (until the first error), fed in pieces whose length the first byte picks. The
    /// session's ``FrameReader`` and NIO's byte-to-message processor around the same decoder must read the same
    /// frames and fail at the same point.
    private static func frames(_ bytes: [UInt8]) -> [Frame] {
        let processor = NIOSingleStepByteToMessageProcessor(FrameDecoder(maximumPayloadLength: 64 * 1024), maximumBufferSize: 128 * 1024)
        let reader = FrameReader(maximumPayloadLength: 64 * 1024)
        let pieceLength = Int(bytes.first ?? 0) + 1
        let body = Array(bytes.dropFirst())
        var frames: [Frame] = []
        var framesRead: [Frame] = []
        var processorFailed = false
        var readerFailed = false
        var offset = 0
        while offset < body.count, !processorFailed || !readerFailed {
            let end = min(body.count, offset + pieceLength)
            let piece = ByteBuffer(bytes: body[offset..<end])
            // A malformed frame ends the session in real use; what came before it counts.
            if !processorFailed {
                do { try processor.process(buffer: piece) { frames.append($0) } } catch { processorFailed = true }
            }
            if !readerFailed {
                do { try reader.process(piece) { framesRead.append($0) } } catch { readerFailed = true }
            }
            offset = end
        }
        precondition(frames == framesRead && processorFailed == readerFailed, "FrameReader read \(framesRead.count) frames (failed: \(readerFailed)), NIO's processor \(frames.count) (failed: \(processorFailed))")
        return frames
    }

    private static func frameDecoder(_ bytes: [UInt8]) {
        let encoder = FrameEncoder()
        for frame in Self.frames(bytes) {
            // Whatever decoded must encode to bytes that decode to the same frame.
            var buffer = encoder.encode(frame)
            var decoder = FrameDecoder(maximumPayloadLength: 64 * 1024)
            let again = try? decoder.decode(buffer: &buffer)
            precondition(again == frame, "frame \(frame) does not survive encoding: \(String(describing: again))")
        }
    }

    private static func handshake(_ bytes: [UInt8]) {
        let frames = Self.frames(bytes)
        let random: @Sendable (Int) -> [UInt8] = { Array(repeating: 7, count: $0) }
        var server = HandshakeStateMachine(
            role: .server(token: "fuzz", authenticationRequired: true), capabilities: [.sealed], maximumDataPayload: 32 * 1024,
            randomBytes: random
        )
        var client = HandshakeStateMachine(role: .client(token: "fuzz"), capabilities: [.sealed], maximumDataPayload: 32 * 1024, randomBytes: random)
        _ = client.start()
        for frame in frames {
            _ = server.receive(frame)
            _ = client.receive(frame)
        }
    }

    private static func httpServer(_ bytes: [UInt8]) {
        let channel = EmbeddedChannel()
        defer { _ = try? channel.finish(acceptAlreadyClosed: true) }
        do {
            try TransportServer.configureConnectionForFuzzing(
                channel, configuration: .init(host: "127.0.0.1", port: 0), onConnection: { $0.close() }
            )
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 9)).wait()
            // Fed in pieces whose length the first byte picks, reading what the server answers as it goes.
            let pieceLength = Int(bytes.first ?? 0) * 4 + 1
            let body = Array(bytes.dropFirst())
            var offset = 0
            while offset < body.count, channel.isActive {
                let end = min(body.count, offset + pieceLength)
                try channel.writeInbound(ByteBuffer(bytes: body[offset..<end]))
                channel.embeddedEventLoop.run()
                while (try? channel.readOutbound(as: ByteBuffer.self)) ?? nil != nil {}
                while (try? channel.readInbound(as: ByteBuffer.self)) ?? nil != nil {}
                offset = end
            }
        } catch {
            // Errors close the connection: the server refused the input, as it should.
        }
        channel.embeddedEventLoop.advanceTime(by: .seconds(120))
    }

    /// The first byte picks the side (its low bit) and the length of the pieces the rest is fed in.
    private static func webSocketFrames(_ bytes: [UInt8]) {
        let body = Array(bytes.dropFirst())
        _ = WebSocketFrameFuzzing.parseAndRewrite(body, maximumFrameSize: 64 * 1024)
        let isClient = (bytes.first ?? 0) & 1 == 1
        let pieceLength = Int((bytes.first ?? 0) >> 1) * 8 + 1
        let channel = EmbeddedChannel(handler: WebSocketMessageHandler(isClient: isClient, maximumFrameSize: 64 * 1024))
        defer { _ = try? channel.finish(acceptAlreadyClosed: true) }
        // Active, as a real connection is (a close frame is only sent on one).
        _ = try? channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 9)).wait()
        var offset = 0
        while offset < body.count, channel.isActive {
            let end = min(body.count, offset + pieceLength)
            _ = try? channel.writeInbound(ByteBuffer(bytes: body[offset..<end]))
            while (try? channel.readOutbound(as: ByteBuffer.self)) ?? nil != nil {}
            while (try? channel.readInbound(as: ByteBuffer.self)) ?? nil != nil {}
            offset = end
        }
    }
}
