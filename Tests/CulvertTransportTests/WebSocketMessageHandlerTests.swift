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
