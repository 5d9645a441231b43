@testable import CulvertTransport
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

/// A frame's bytes on the wire, as NIO's encoder (an implementation independent of culvert's) writes them.
func wireBytes(_ frames: WebSocketFrame...) throws -> ByteBuffer {
    let encoder = EmbeddedChannel(handler: WebSocketFrameEncoder())
    defer { _ = try? encoder.finish() }
    var bytes = ByteBuffer()
    for frame in frames {
        try encoder.writeOutbound(frame)
        while var buffer = try encoder.readOutbound(as: ByteBuffer.self) { bytes.writeBuffer(&buffer) }
    }
    return bytes
}

@Suite struct WebSocketMessageHandlerTests {
    func masked(_ opcode: WebSocketOpcode, _ bytes: [UInt8], fin: Bool = true) -> WebSocketFrame {
        // NIO's encoder masks the data with the key as it writes the frame.
        WebSocketFrame(fin: fin, opcode: opcode, maskKey: WebSocketMaskingKey.random(), data: ByteBuffer(bytes: bytes))
    }

    /// Binary messages and their continuations reach the session as bytes, in order.
    @Test func binaryAndContinuationFramesPassThrough() throws {
        let channel = EmbeddedChannel(handler: WebSocketMessageHandler(isClient: false))
        defer { _ = try? channel.finish() }
        try channel.writeInbound(try wireBytes(self.masked(.binary, [1, 2], fin: false)))
        try channel.writeInbound(try wireBytes(self.masked(.continuation, [3], fin: true)))
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
        try channel.writeInbound(try wireBytes(frame))
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
        try channel.writeInbound(try wireBytes(self.masked(.ping, [9, 9])))
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
            _ = try? channel.writeInbound(try wireBytes(frame))
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
        try channel.writeInbound(try wireBytes(WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: data)))
        let echo = try #require(try writtenFrames(channel).first)
        #expect(echo.opcode == .connectionClose)
        #expect(!channel.isActive)
    }

    /// Frames that arrive a byte at a time, and several frames in one read, come out as the same messages: the
    /// handler reads frames from the socket's bytes, not from NIO's frame decoder.
    @Test func framesSplitAcrossReadsOrJoinedInOneAreReadWhole() throws {
        let payloads: [[UInt8]] = [[1], Array(repeating: 7, count: 200), Array(0..<255) + Array(0..<255), []]
        let frames = payloads.map { self.masked(.binary, $0) }
        let wire = try wireBytes(frames[0], frames[1], frames[2], frames[3])
        for split in [1, 3, 13, wire.readableBytes] {
            let channel = EmbeddedChannel(handler: WebSocketMessageHandler(isClient: false))
            defer { _ = try? channel.finish() }
            var rest = wire
            while let piece = rest.readSlice(length: min(split, rest.readableBytes)), piece.readableBytes > 0 {
                try channel.writeInbound(piece)
            }
            var received: [UInt8] = []
            while let message = try channel.readInbound(as: ByteBuffer.self) { received += Array(message.readableBytesView) }
            #expect(received == payloads.flatMap { $0 }, "reads of \(split) bytes")
        }
    }

    /// A large frame's payload goes up piece by piece as it arrives, before the frame is complete, on a client
    /// (slices of the reads) and on a server (unmasked with the key where each piece starts); a control frame that
    /// follows is still read whole.
    @Test func aLargeFramesPayloadIsPassedUpAsItArrives() throws {
        let payload = (0..<40_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        for isClient in [true, false] {
            let channel = EmbeddedChannel(handler: WebSocketMessageHandler(isClient: isClient))
            defer { _ = try? channel.finish() }
            let frame = isClient
                ? WebSocketFrame(fin: true, opcode: .binary, data: ByteBuffer(bytes: payload))
                : self.masked(.binary, payload)
            var wire = try wireBytes(frame, isClient ? WebSocketFrame(fin: true, opcode: .ping, data: ByteBuffer(bytes: [9]))
                : self.masked(.ping, [9]))
            var received: [UInt8] = []
            // Pieces of odd lengths, so that the mask's position moves within its four bytes.
            for length in [5, 4_001, 10_003, wire.readableBytes - 14_009] {
                try channel.writeInbound(wire.readSlice(length: length)!)
                var piece: [UInt8] = []
                while let message = try channel.readInbound(as: ByteBuffer.self) { piece += Array(message.readableBytesView) }
                if received.count + piece.count < payload.count {
                    #expect(!piece.isEmpty || length == 5, "\(length) bytes read, none passed up (client: \(isClient))")
                }
                received += piece
            }
            #expect(wire.readableBytes == 0)
            // Compared without printing 40,000 bytes when they differ.
            #expect(received.count == payload.count, "client: \(isClient)")
            #expect(received == payload ? true : false, "client: \(isClient)")
            #expect(try writtenFrames(channel).map(\.opcode) == [.pong])
        }
    }

    /// A server unmasks every payload correctly while it reuses its buffer, and a payload the layer above still
    /// holds is never overwritten by the next frame's.
    @Test func heldPayloadsAreNotOverwrittenByLaterFrames() throws {
        let channel = EmbeddedChannel(handler: WebSocketMessageHandler(isClient: false))
        defer { _ = try? channel.finish() }
        for value in UInt8(1)...UInt8(20) {
            try channel.writeInbound(try wireBytes(self.masked(.binary, Array(repeating: value, count: Int(value) * 5))))
        }
        for value in UInt8(1)...UInt8(20) {
            let message = try #require(try channel.readInbound(as: ByteBuffer.self))
            #expect(Array(message.readableBytesView) == Array(repeating: value, count: Int(value) * 5))
        }
    }

    /// A frame over the size limit is refused with 1009 as soon as its header arrives; control frames over 125
    /// bytes or without FIN with 1002.
    @Test func oversizedAndMalformedFramesCloseWithTheRFCCodes() throws {
        func closeCode(afterBytes bytes: ByteBuffer, limit: Int) throws -> WebSocketErrorCode? {
            let channel = EmbeddedChannel()
            defer { _ = try? channel.finish() }
            try channel.pipeline.syncOperations.addHandlers([
                WebSocketMessageHandler(isClient: false, maximumFrameSize: limit), CloseOnError(),
            ])
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
            try channel.writeInbound(bytes)
            #expect(try channel.readInbound(as: ByteBuffer.self) == nil)
            guard var data = try writtenFrames(channel).first(where: { $0.opcode == .connectionClose })?.data else { return nil }
            return data.readWebSocketErrorCode()
        }
        // Only the header of a 1 MiB frame: refused without waiting for its payload.
        var header = ByteBuffer(bytes: [0x82, 0xFF])
        header.writeInteger(UInt64(1 << 20))
        header.writeBytes([1, 2, 3, 4])
        #expect(try closeCode(afterBytes: header, limit: 64 * 1024) == .messageTooLarge)
        // A ping announcing 126 bytes (a two-byte extended length).
        #expect(try closeCode(afterBytes: ByteBuffer(bytes: [0x89, 0xFE, 0x00, 0x7E]), limit: 1 << 20) == .protocolError)
        // A ping without FIN.
        #expect(try closeCode(afterBytes: ByteBuffer(bytes: [0x09, 0x80, 1, 2, 3, 4]), limit: 1 << 20) == .protocolError)
    }

    /// A long run of large frames that each end in the middle of a read keeps the handler's buffer within a few
    /// frames' size: the bytes of frames already read are dropped, not carried along (a bulk download once grew
    /// the buffer, and copied it, with every read).
    @Test func framesEndingMidReadDoNotGrowTheBuffer() throws {
        let handler = WebSocketMessageHandler(isClient: true)
        let channel = EmbeddedChannel(handler: handler)
        defer { _ = try? channel.finish() }
        let frameLength = 16 * 1024
        var wire = try wireBytes(WebSocketFrame(fin: true, opcode: .binary, data: ByteBuffer(repeating: 5, count: frameLength)))
        let frame = wire.readBytes(length: wire.readableBytes)!
        var stream = ByteBuffer()
        for _ in 0..<200 { stream.writeBytes(frame) }
        var received = 0
        var largest = 0
        // Reads of 5,000 bytes: no frame boundary falls on a read boundary for a long time.
        while let piece = stream.readSlice(length: min(5000, stream.readableBytes)), piece.readableBytes > 0 {
            try channel.writeInbound(piece)
            while let message = try channel.readInbound(as: ByteBuffer.self) { received += message.readableBytes }
            largest = max(largest, handler.bufferedCapacity)
        }
        #expect(received == 200 * frameLength)
        #expect(largest <= 4 * frameLength, "the partial-frame buffer grew to \(largest) bytes")
    }

    /// Several writes and one flush make one binary message of their bytes in order, on a client (masked into one
    /// buffer) and on a server (the header, then the parts as they are); a close frame written after them follows
    /// the message.
    @Test func writesUpToAFlushMakeOneMessage() throws {
        for isClient in [true, false] {
            let channel = EmbeddedChannel(handler: WebSocketMessageHandler(isClient: isClient))
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
            let parts = [ByteBuffer(bytes: [1, 2, 3]), ByteBuffer(repeating: 4, count: 3000), ByteBuffer(bytes: [5])]
            for part in parts { channel.write(part, promise: nil) }
            #expect(try channel.readOutbound(as: ByteBuffer.self) == nil, "nothing goes out before the flush")
            channel.flush()
            let frames = try writtenFrames(channel)
            #expect(frames.count == 1)
            #expect(frames.first?.opcode == .binary && (frames.first?.maskKey != nil) == isClient)
            #expect(Array(frames.first?.unmaskedData.readableBytesView ?? ByteBuffer().readableBytesView) == [1, 2, 3] + Array(repeating: 4, count: 3000) + [5])
            channel.write(ByteBuffer(bytes: [6]), promise: nil)
            channel.close(promise: nil)
            #expect(try writtenFrames(channel).map(\.opcode) == [.binary, .connectionClose])
            _ = try? channel.finish()
        }
    }
}
