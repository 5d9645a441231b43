import CulvertTransport
import NIOCore
import NIOEmbedded
import NIOWebSocket
import Testing

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
        let pong = try #require(try channel.readOutbound(as: WebSocketFrame.self))
        #expect(pong.opcode == .pong && pong.data == ByteBuffer(bytes: [9, 9]))
    }

    /// A client gives every frame a mask key (the frame encoder applies it on the wire).
    @Test func clientMasksOutboundMessages() throws {
        let client = EmbeddedChannel(handler: WebSocketMessageHandler(isClient: true))
        defer { _ = try? client.finish() }
        try client.writeOutbound(ByteBuffer(bytes: [1, 2, 3]))
        let frame = try #require(try client.readOutbound(as: WebSocketFrame.self))
        #expect(frame.opcode == .binary && frame.maskKey != nil && frame.data == ByteBuffer(bytes: [1, 2, 3]))
    }

    /// Text frames close the connection with 1003; unmasked client frames with 1002.
    @Test func protocolViolationsCloseWithTheRFCCodes() throws {
        for (frame, code) in [
            (self.masked(.text, Array("hi".utf8)), WebSocketErrorCode.unacceptableData),
            (WebSocketFrame(fin: true, opcode: .binary, data: ByteBuffer(bytes: [1])), .protocolError),
        ] {
            let channel = EmbeddedChannel(handler: WebSocketMessageHandler(isClient: false))
            _ = try? channel.writeInbound(frame)
            var close = try #require(try channel.readOutbound(as: WebSocketFrame.self))
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
        let echo = try #require(try channel.readOutbound(as: WebSocketFrame.self))
        #expect(echo.opcode == .connectionClose)
        #expect(!channel.isActive)
    }
}
