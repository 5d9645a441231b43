import CulvertTransport
import NIOCore
import NIOEmbedded
import NIOWebSocket
import Testing

/// Decodes what a handler wrote (raw frame bytes) back into frames with NIO's decoder.
func writtenFrames(_ channel: EmbeddedChannel) throws -> [WebSocketFrame] {
    var bytes = ByteBuffer()
    while var buffer = try channel.readOutbound(as: ByteBuffer.self) { bytes.writeBuffer(&buffer) }
    let decoder = EmbeddedChannel(handler: ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: 1 << 20)))
    defer { _ = try? decoder.finish() }
    try decoder.writeInbound(bytes)
    var frames: [WebSocketFrame] = []
    while let frame = try decoder.readInbound(as: WebSocketFrame.self) { frames.append(frame) }
    return frames
}

@Suite struct WebSocketMessageHandlerTests {
    func masked(_ opcode: WebSocketOpcode, _ bytes: [UInt8], fin: Bool = true) -> WebSocketFrame {
        let key = WebSocketMaskingKey.random()
        var data = ByteBuffer(bytes: bytes)
        data.webSocketMask(key)
        return WebSocketFrame(fin: fin, opcode: opcode, maskKey: key, data: data)
    }

    /// Binary messages and their continuations reach the session as bytes, in order.
    @Test func binaryAndContinuationFramesPassThrough() throws {
        let channel = EmbeddedChannel(handler: WebSocketMessageHandler(isClient: false))
        defer { _ = try? channel.finish() }
        try channel.writeInbound(self.masked(.binary, [1, 2], fin: false))
        try channel.writeInbound(self.masked(.continuation, [3], fin: true))
        #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(bytes: [1, 2]))
        #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(bytes: [3]))
    }

    /// A handler that closes on any error, as the transport connection above the WebSocket handler does.
    final class CloseOnError: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
    }

    /// The close code of the first close frame the handler wrote.
    func closeCode(after frame: WebSocketFrame) throws -> WebSocketErrorCode? {
        let channel = EmbeddedChannel()
        defer { _ = try? channel.finish() }
        try channel.pipeline.syncOperations.addHandlers([WebSocketMessageHandler(isClient: false), CloseOnError()])
        // Active, as a real connection is: only then does a close from above speak for itself (with 1000).
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try channel.writeInbound(frame)
        guard var data = try writtenFrames(channel).first(where: { $0.opcode == .connectionClose })?.data else { return nil }
        return data.readWebSocketErrorCode()
    }

    /// A text frame gets close code 1003 (unacceptable data), even when the layer above closes on the error: the
    /// close frame is sent before the error is reported, so it never says 1000.
    @Test func textFrameIsClosedWithUnacceptableData() throws {
        #expect(try self.closeCode(after: self.masked(.text, [0x41])) == .unacceptableData)
    }

    /// A frame with a reserved bit set (no extension was negotiated) gets close code 1002 (protocol error).
    @Test func reservedBitsAreAProtocolError() throws {
        var frame = self.masked(.binary, [1])
        frame.rsv1 = true
        #expect(try self.closeCode(after: frame) == .protocolError)
    }

    /// An unmasked client frame gets 1002 as well.
    @Test func unmaskedClientFrameIsAProtocolError() throws {
        #expect(try self.closeCode(after: WebSocketFrame(fin: true, opcode: .binary, data: ByteBuffer(bytes: [1]))) == .protocolError)
    }

    /// A ping is answered with a pong carrying the same data.
    @Test func pingIsAnsweredWithPong() throws {
        let channel = EmbeddedChannel(handler: WebSocketMessageHandler(isClient: false))
        defer { _ = try? channel.finish() }
        try channel.writeInbound(self.masked(.ping, [9, 9]))
        let pong = try #require(try writtenFrames(channel).first)
        #expect(pong.opcode == .pong && pong.maskKey == nil && pong.data == ByteBuffer(bytes: [9, 9]))
    }

    /// A client masks every frame with a key; unmasking gives the payload back, for every length around the
    /// 8-byte masking stride and the 126/65536 length encodings.
    @Test func clientMasksOutboundMessages() throws {
        for length in [0, 1, 7, 8, 9, 125, 126, 127, 65535, 65536, 100_003] {
            let client = EmbeddedChannel(handler: WebSocketMessageHandler(isClient: true))
            let payload = ByteBuffer(bytes: (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31) })
            try client.writeOutbound(payload)
            let frame = try #require(try writtenFrames(client).first)
            #expect(frame.opcode == .binary && frame.fin && frame.maskKey != nil, "length \(length)")
            #expect(frame.unmaskedData == payload, "length \(length)")
            _ = try? client.finish()
        }
    }

    /// A server sends frames unmasked, with the payload as given.
    @Test func serverSendsUnmaskedFrames() throws {
        let server = EmbeddedChannel(handler: WebSocketMessageHandler(isClient: false))
        defer { _ = try? server.finish() }
        try server.writeOutbound(ByteBuffer(bytes: [4, 5, 6]))
        let frame = try #require(try writtenFrames(server).first)
        #expect(frame.maskKey == nil && frame.data == ByteBuffer(bytes: [4, 5, 6]))
    }

    /// Text frames close the connection with 1003; unmasked client frames with 1002.
    @Test func protocolViolationsCloseWithTheRFCCodes() throws {
        for (frame, code) in [
            (self.masked(.text, Array("hi".utf8)), WebSocketErrorCode.unacceptableData),
            (WebSocketFrame(fin: true, opcode: .binary, data: ByteBuffer(bytes: [1])), .protocolError),
        ] {
            let channel = EmbeddedChannel(handler: WebSocketMessageHandler(isClient: false))
            _ = try? channel.writeInbound(frame)
            var close = try #require(try writtenFrames(channel).first)
            #expect(close.opcode == .connectionClose)
            #expect(close.data.readWebSocketErrorCode() == code)
            #expect(try channel.readInbound(as: ByteBuffer.self) == nil)
            _ = try? channel.finish()
        }
    }

    /// A close from the peer is echoed and the connection closes.
    @Test func closeIsEchoed() throws {
        let channel = EmbeddedChannel(handler: WebSocketMessageHandler(isClient: false))
        var data = ByteBuffer()
        data.write(webSocketErrorCode: .normalClosure)
        let key = WebSocketMaskingKey.random()
        data.webSocketMask(key)
        try channel.writeInbound(WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: key, data: data))
        let echo = try #require(try writtenFrames(channel).first)
        #expect(echo.opcode == .connectionClose)
        #expect(!channel.isActive)
    }
}
