import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@testable import CulvertTransport

/// The server end of a chunked or polling connection driven on an `EmbeddedChannel`, its timers moved by
/// `EmbeddedEventLoop.advanceTime`: what the client's GETs get, and when.
struct HTTPServerTransportConnectionTests {
    /// What the connection told the session.
    private final class RecordingDelegate: TransportConnectionDelegate {
        var received: [ByteBuffer] = []
        var closed = false
        var closeError: (any Error)?
        /// Called when the connection's writability changes (the session sends what waited, say).
        var onWritabilityChange: ((any TransportConnection) -> Void)?

        func transport(_ transport: any TransportConnection, didReceive message: ByteBuffer) { self.received.append(message) }
        func transportDidReadComplete(_ transport: any TransportConnection) {}
        func transportWritabilityChanged(_ transport: any TransportConnection) { self.onWritabilityChange?(transport) }
        func transportDidClose(_ transport: any TransportConnection, error: (any Error)?) {
            self.closed = true
            self.closeError = error
        }
    }

    /// A connection on a fresh embedded loop, started with a recording delegate.
    private func connection(
        kind: TransportKind, settings: HTTPTransportServerSettings = HTTPTransportServerSettings()
    ) -> (HTTPServerTransportConnection, RecordingDelegate, EmbeddedEventLoop) {
        let loop = EmbeddedEventLoop()
        let connection = HTTPServerTransportConnection(
            id: "test", kind: kind, eventLoop: loop, peerDescription: "test", peerAddress: nil, settings: settings
        )
        let delegate = RecordingDelegate()
        connection.start(delegate: delegate)
        return (connection, delegate, loop)
    }

    /// Everything written to `channel` so far: heads, the body bytes joined, and how many responses ended.
    private func written(_ channel: EmbeddedChannel) throws -> (heads: [HTTPResponseHead], body: ByteBuffer, ends: Int) {
        var heads: [HTTPResponseHead] = []
        var body = ByteBuffer()
        var ends = 0
        while let part = try channel.readOutbound(as: HTTPServerResponsePart.self) {
            switch part {
            case .head(let head): heads.append(head)
            case .body(.byteBuffer(var bytes)): body.writeBuffer(&bytes)
            case .body(.fileRegion): Issue.record("a file region was written")
            case .end: ends += 1
            }
        }
        return (heads, body, ends)
    }

    private func records(_ bytes: ByteBuffer) throws -> [HTTPTransportRecord] {
        let processor = NIOSingleStepByteToMessageProcessor(HTTPTransportRecordDecoder(maximumPayloadLength: 1 << 20))
        var records: [HTTPTransportRecord] = []
        try processor.process(buffer: bytes) { records.append($0) }
        return records
    }

    /// A poll with nothing to send is held until its hold time, then answered with the upstream acknowledgement; a
    /// connection that then gets no request for its idle timeout closes, and tells the session why.
    @Test func aHeldPollIsAnsweredAtItsHoldTimeAndAnIdleConnectionClosesAtItsTimeout() throws {
        let settings = HTTPTransportServerSettings(pollHoldTime: .seconds(25), idleTimeout: .seconds(60))
        let (connection, delegate, loop) = self.connection(kind: .polling, settings: settings)
        let channel = EmbeddedChannel(loop: loop)
        defer { _ = try? channel.finish() }
        connection.downRequest(channel: channel, version: .http1_1, mode: .poll, acknowledged: 0, signed: true, shape: .binary)
        loop.advanceTime(by: .seconds(24))
        #expect(try self.written(channel).ends == 0, "the poll was answered before its hold time")
        loop.advanceTime(by: .seconds(1))
        let answer = try self.written(channel)
        #expect(answer.heads.map(\.status) == [.ok] && answer.ends == 1)
        #expect(try self.records(answer.body) == [.acknowledge(0)])

        loop.advanceTime(by: .seconds(30))
        #expect(!delegate.closed, "closed before the idle timeout")
        loop.advanceTime(by: .seconds(20))
        #expect(delegate.closed)
        guard case .timedOut(.polling, phase: "next request", _)? = delegate.closeError as? TransportError else {
            Issue.record("the idle close did not say it timed out waiting for the next request: \(String(describing: delegate.closeError))")
            return
        }
    }

    /// A streaming GET starts with its head and an ACK, carries what the session sends as DATA records at once, and
    /// ends at its maximum age, so that the client asks again before a proxy cuts it.
    @Test func aStreamingGetCarriesBytesAsTheyComeAndEndsAtItsMaximumAge() throws {
        let settings = HTTPTransportServerSettings(streamResponseMaxAge: .seconds(50))
        let (connection, _, loop) = self.connection(kind: .chunked, settings: settings)
        let channel = EmbeddedChannel(loop: loop)
        defer { _ = try? channel.finish() }
        connection.downRequest(channel: channel, version: .http1_1, mode: .stream, acknowledged: 0, signed: true, shape: .binary)
        let start = try self.written(channel)
        #expect(start.heads.first?.headers["Transfer-Encoding"] == ["chunked"])
        #expect(try self.records(start.body) == [.acknowledge(0)])

        connection.send(ByteBuffer(string: "hello"))
        let data = try self.written(channel)
        #expect(try self.records(data.body) == [.data(offset: 0, payload: ByteBuffer(string: "hello"))])
        #expect(data.ends == 0)

        loop.advanceTime(by: .seconds(50))
        #expect(try self.written(channel).ends == 1)
        connection.send(ByteBuffer(string: "later"))
        #expect(try self.written(channel).body.readableBytes == 0, "bytes were written on the ended response")
        connection.close()
        loop.run()
    }

    /// Upstream bytes in a POST reach the session once, and the streaming GET acknowledges them a moment later.
    @Test func uploadedBytesReachTheSessionAndAreAcknowledgedOnTheStream() throws {
        let (connection, delegate, loop) = self.connection(kind: .chunked)
        let down = EmbeddedChannel(loop: loop)
        let up = EmbeddedChannel(loop: loop)
        defer {
            _ = try? down.finish()
            _ = try? up.finish()
        }
        connection.downRequest(channel: down, version: .http1_1, mode: .stream, acknowledged: 0, signed: true, shape: .binary)
        _ = try self.written(down)
        connection.uploadStarted(channel: up)
        connection.uploadRecords([.data(offset: 0, payload: ByteBuffer(string: "ab")), .data(offset: 0, payload: ByteBuffer(string: "abc"))], signed: true)
        #expect(delegate.received == [ByteBuffer(string: "ab"), ByteBuffer(string: "c")])
        loop.run()
        #expect(try self.records(self.written(down).body) == [.acknowledge(3)])
        #expect(connection.uploadFinished(channel: up) == 3)
        connection.close()
        loop.run()
    }

    /// A poll whose acknowledgement opens the send window is answered with what the session sends at that moment:
    /// the bytes go on the new poll, not into a response that was already let go of.
    @Test func bytesSentWhenAPollOpensTheWindowAnswerThatPoll() throws {
        let settings = HTTPTransportServerSettings(pollHoldTime: .seconds(25), sendWindowBytes: 4)
        let (connection, delegate, loop) = self.connection(kind: .polling, settings: settings)
        let first = EmbeddedChannel(loop: loop)
        let second = EmbeddedChannel(loop: loop)
        defer {
            _ = try? first.finish()
            _ = try? second.finish()
        }
        connection.send(ByteBuffer(string: "full"))
        #expect(!connection.isWritable)
        connection.downRequest(channel: first, version: .http1_1, mode: .poll, acknowledged: 0, signed: true, shape: .binary)
        #expect(try self.records(self.written(first).body) == [.acknowledge(0), .data(offset: 0, payload: ByteBuffer(string: "full"))])

        delegate.onWritabilityChange = { transport in
            if transport.isWritable { transport.send(ByteBuffer(string: "more")) }
        }
        connection.downRequest(channel: second, version: .http1_1, mode: .poll, acknowledged: 4, signed: true, shape: .binary)
        let answer = try self.written(second)
        #expect(answer.ends == 1, "the poll that opened the window was not answered at once")
        #expect(try self.records(answer.body) == [.acknowledge(0), .data(offset: 4, payload: ByteBuffer(string: "more"))])
        connection.close()
        loop.run()
    }
}
