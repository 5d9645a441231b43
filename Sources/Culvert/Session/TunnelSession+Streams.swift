import CompressNIO
import CulvertCore
import CulvertTransport
import Logging
import NIOCore

/// The session's streams: opening them (for a listener, or for the peer through the connector), the events of their
/// sockets, the stream frames the multiplexer delivers, and framing what their sockets read. A stream holds its
/// socket's handler; the multiplexer in the state machine holds its flow control.
extension TunnelSession {
    // MARK: Streams opened by this side (listeners)

    /// Carries `channel`, a connection a listener accepted (on this loop), as a new stream to `target`.
    /// `completion` learns whether the peer opened the target, so that the listener can answer its own client.
    /// When the session cannot take a stream now, it closes the channel and says why.
    func carry(_ channel: any Channel, to target: TargetAddress, completion: @escaping (StreamOpenResult) -> Void) {
        self.eventLoop.preconditionInEventLoop()
        let opened: (StreamID, Frame)?
        do {
            opened = self.machine.acceptsNewStreams && !self.finished
                ? try self.machine.withEstablished { try $0.mux.openStream(to: target) } : nil
        } catch {
            self.logger.warning("refusing local connection for \(target): \(error)")
            channel.close(promise: nil)
            completion(.unavailable("\(error)"))
            return
        }
        guard let (id, frame) = opened else {
            self.logger.warning("refusing local connection for \(target): the tunnel session is not accepting streams")
            channel.close(promise: nil)
            completion(.unavailable("the tunnel session is not accepting streams"))
            return
        }
        let handler = StreamChannelHandler(id: id, target: target, session: self)
        handler.openCompletion = completion
        do {
            try channel.pipeline.syncOperations.addHandler(handler)
        } catch {
            channel.close(promise: nil)
            self.enqueueIfAny(self.machine.withEstablished { $0.mux.localReset(id, code: .cancelled, message: "the local connection closed") } ?? nil)
            completion(.unavailable("the local connection closed"))
            return
        }
        self.streams[id] = handler
        self.metrics?.streamsOpen(1)
        self.statistics.streamsOpened += 1
        self.logger.debug("stream \(id): opening to \(target)")
        self.enqueue(frame)
    }

    // MARK: Streams opened by the peer (connectors)

    private func openRequested(_ id: StreamID, target: TargetAddress) {
        guard let connector = self.connector else {
            self.targetFailed(id, StreamOpenFailure(.other, "this side does not open targets"))
            return
        }
        connector.connect(to: target, on: self.eventLoop, logger: self.logger).hop(to: self.eventLoop).assumeIsolated().whenComplete { [self] result in
            switch result {
            case .success(let channel):
                self.targetConnected(id, channel: channel, target: target)
            case .failure(let failure as StreamOpenFailure):
                self.targetFailed(id, failure)
            case .failure(let error):
                self.targetFailed(id, StreamOpenFailure(.other, "cannot connect to \(target): \(error)"))
            }
        }
    }

    /// The target of stream `id` is connected on `channel` (on this session's loop).
    private func targetConnected(_ id: StreamID, channel: any Channel, target: TargetAddress) {
        guard !self.finished, let frame = self.machine.withEstablished({ $0.mux.acceptSucceeded(id) }) ?? nil else {
            // The stream was reset (or the session ended) while connecting.
            channel.close(promise: nil)
            return
        }
        let handler = StreamChannelHandler(id: id, target: target, session: self)
        do {
            try channel.pipeline.syncOperations.addHandler(handler)
        } catch {
            channel.close(promise: nil)
            self.enqueueIfAny(self.machine.withEstablished { $0.mux.localReset(id, code: .cancelled, message: "the target closed") } ?? nil)
            return
        }
        self.streams[id] = handler
        if let metrics = self.metrics {
            metrics.streamsOpen(1)
            metrics.streamOpened(outcome: .ok)
        }
        self.statistics.streamsOpened += 1
        self.logger.debug("stream \(id): connected to \(target)")
        self.enqueue(frame)
        self.readIfAllowed(handler)
    }

    private func targetFailed(_ id: StreamID, _ failure: StreamOpenFailure) {
        guard !self.finished,
            let frame = self.machine.withEstablished({ $0.mux.acceptFailed(id, reason: failure.reason, message: failure.message) }) ?? nil
        else { return }
        self.logger.info("stream \(id): \(failure.message)")
        self.metrics?.streamOpened(outcome: failure.reason == .notAllowed ? .refused : .targetFailed)
        self.statistics.streamsRefused += 1
        self.enqueue(frame)
    }

    // MARK: Events from stream sockets

    func localRead(_ stream: StreamChannelHandler, _ buffer: ByteBuffer) {
        if stream.pendingSend == nil {
            stream.pendingSend = buffer
        } else {
            var incoming = buffer
            stream.pendingSend!.writeBuffer(&incoming)
        }
        self.pump(stream)
    }

    /// What the read queued goes out with the next flush of this loop tick (queued by ``enqueue(_:)``), not now:
    /// streams that read in the same tick share one transport message.
    func localReadComplete(_ stream: StreamChannelHandler) {
        if self.streams[stream.id] === stream { self.readIfAllowed(stream) }
    }

    /// The socket can take writes again: credit the peer for what it held.
    func localWritable(_ stream: StreamChannelHandler) {
        guard stream.uncreditedBytes > 0, self.streams[stream.id] === stream else { return }
        let bytes = stream.uncreditedBytes
        stream.uncreditedBytes = 0
        self.credit(stream, bytes: bytes)
    }

    func localInputClosed(_ stream: StreamChannelHandler) {
        self.logger.trace("stream \(stream.id): local EOF")
        guard self.streams[stream.id] === stream else { return }
        stream.finPending = true
        if stream.pendingSend == nil { self.sendFin(stream) }
    }

    /// The socket closed. A clean EOF after this side shut the socket's output closes the channel without an
    /// `inputClosed` event, so that case is a FIN; anything else before the stream finished is an abort.
    func localClosed(_ stream: StreamChannelHandler, afterError: Bool) {
        guard self.streams[stream.id] === stream else { return }
        if !afterError && stream.outputShutRequested {
            self.localInputClosed(stream)
            return
        }
        self.removeStream(stream, result: .unavailable("the local connection closed"))
        // A socket that failed (a TCP reset, above all) is carried as RST `connection reset`, so that the other side
        // resets its socket too: a truncated transfer must never reach an application as a clean end.
        let (code, message): (ResetCode, String) =
            afterError
            ? (.connectionReset, self.role == .server ? "the target reset the connection" : "the local connection was reset")
            : (.cancelled, "the local connection closed")
        if let frame = self.machine.withEstablished({ $0.mux.localReset(stream.id, code: code, message: message) }) ?? nil {
            self.logger.debug("stream \(stream.id): \(message) before the stream finished; resetting")
            self.statistics.streamsReset += 1
            self.enqueue(frame)
        }
    }

    /// Whether `stream` may read its socket now (asked by its handler for every read).
    func mayReadLocally(_ stream: StreamChannelHandler) -> Bool {
        self.streams[stream.id] === stream && self.canRead(stream)
    }

    // MARK: Stream frames

    func handleStreamAction(_ action: MuxInboundAction) {
        switch action {
        case .deliver(let id, let flags, let payload):
            guard let stream = self.streams[id] else { return }
            if flags.contains(.compressed) {
                self.deliverCompressed(stream, payload)
            } else {
                self.deliver(stream, payload)
            }
        case .creditAvailable(let id):
            if let stream = self.streams[id] {
                self.pump(stream)
                self.readIfAllowed(stream)
            }
        case .openRequested(let id, let target):
            self.openRequested(id, target: target)
        case .opened(let id):
            if let stream = self.streams[id] {
                self.logger.debug("stream \(id): open to \(stream.target)")
                stream.openCompletion?(.opened)
                stream.openCompletion = nil
                self.pump(stream)
                self.readIfAllowed(stream)
            }
        case .openFailed(let id, let reason, let message):
            self.statistics.streamsRefused += 1
            if let stream = self.streams[id] {
                self.logger.warning("server refused target \(stream.target): \(reason): \(message)")
                self.removeStream(stream, result: .refused(reason, message))
                stream.close(abort: false)
            }
        case .remoteFinished(let id, let complete):
            self.logger.trace("stream \(id): FIN received, complete: \(complete)")
            guard let stream = self.streams[id] else { return }
            if complete {
                self.finishStream(stream)
            } else {
                stream.outputShutRequested = true
                stream.shutOutputAfterWrites()
            }
        case .reset(let id, let code, let message):
            self.statistics.streamsReset += 1
            if let stream = self.streams[id] {
                self.logger.debug("stream \(id) to \(stream.target) reset by peer: \(code) \(message)")
                self.removeStream(stream, result: .refused(.other, message))
                stream.close(abort: true)
            }
        case .reply(let reply, let closeStream, let reason):
            self.logger.warning("\(reason)")
            self.enqueue(reply)
            if let id = closeStream, let stream = self.streams[id] {
                self.statistics.streamsReset += 1
                self.removeStream(stream, result: .unavailable(reason))
                stream.close(abort: true)
            }
        case .ignore(let reason):
            self.logger.trace("\(reason)")
        case .sessionError(let code, let message):
            self.perform(self.machine.decodingFailed(code, message))
        }
    }

    /// Writes a DATA payload to the stream's socket, and credits the peer at once while the socket takes writes
    /// (what a relay does): a socket that stops taking them holds its credit until it drains.
    private func deliver(_ stream: StreamChannelHandler, _ payload: ByteBuffer) {
        let count = payload.readableBytes
        self.statistics.bytesReceived += count
        stream.write(payload)
        if !stream.needsFlush {
            stream.needsFlush = true
            self.unflushedStreams.append(stream)
        }
        if stream.isWritable && stream.uncreditedBytes == 0 {
            self.credit(stream, bytes: count)
        } else {
            stream.uncreditedBytes += count
        }
    }

    private func credit(_ stream: StreamChannelHandler, bytes: Int) {
        guard let (frames, complete) = self.machine.withEstablished({ $0.mux.consumed(stream.id, bytes: bytes) }) else { return }
        for frame in frames { self.enqueue(frame) }
        if complete { self.finishStream(stream) }
    }

    /// Inflates a compressed DATA payload with the stream's own context, charges the inflated size against the
    /// stream's credit, and delivers it. A payload that inflates past the maximum DATA size (a decompression bomb)
    /// or does not inflate ends this stream only.
    private func deliverCompressed(_ stream: StreamChannelHandler, _ payload: ByteBuffer) {
        guard self.machine.compressionEnabled else {
            self.resetStream(stream, .protocolError, "compressed DATA without negotiated compression")
            return
        }
        let limit = self.configuration.mux.maximumDataPayload
        var input = payload
        var output = ByteBufferAllocator().buffer(capacity: limit + 1)
        do {
            if stream.decompressor == nil {
                stream.decompressor = try ZlibDecompressor(algorithm: .deflate, windowSize: 15)
            }
            try stream.decompressor!.inflate(from: &input, to: &output)
        } catch let error as CompressNIOError where error == .bufferOverflow {
            self.resetStream(stream, .decompressionBomb, "compressed DATA inflates past the \(limit)-byte maximum")
            return
        } catch {
            self.resetStream(stream, .protocolError, "compressed DATA does not inflate: \(error)")
            return
        }
        guard input.readableBytes == 0 else {
            self.resetStream(stream, .decompressionBomb, "compressed DATA inflates past the \(limit)-byte maximum")
            return
        }
        if let violation = self.machine.withEstablished({ $0.mux.receivedInflated(stream.id, bytes: output.readableBytes) }) ?? nil {
            self.handleStreamAction(violation)
            return
        }
        self.deliver(stream, output)
    }

    private func resetStream(_ stream: StreamChannelHandler, _ code: ResetCode, _ message: String) {
        self.logger.warning("stream \(stream.id): \(message)")
        self.enqueueIfAny(self.machine.withEstablished { $0.mux.localReset(stream.id, code: code, message: message) } ?? nil)
        if self.streams[stream.id] === stream {
            self.statistics.streamsReset += 1
            self.removeStream(stream, result: .unavailable(message))
            stream.close(abort: true)
        }
    }

    /// Forgets `stream`; a listener still waiting for its opening hears `result`.
    private func removeStream(_ stream: StreamChannelHandler, result: StreamOpenResult) {
        if self.streams.removeValue(forKey: stream.id) != nil { self.metrics?.streamsOpen(-1) }
        if let completion = stream.openCompletion {
            stream.openCompletion = nil
            completion(result)
        }
        self.onStreamRemoved?()
    }

    /// Both directions finished: close the socket once what was written is out, and forget the stream.
    private func finishStream(_ stream: StreamChannelHandler) {
        self.removeStream(stream, result: .opened)
        self.logger.debug("stream \(stream.id) to \(stream.target) finished")
        stream.closeAfterWrites()
        self.endIfDrained()
    }

    // MARK: Sending stream data

    /// Frames as much of the stream's pending bytes as its credit allows; sends FIN once they are all out.
    private func pump(_ stream: StreamChannelHandler) {
        while var pending = stream.pendingSend {
            let sendable = self.machine.sendableBytes(stream.id)
            guard sendable > 0 else { break }
            let slice = pending.readSlice(length: min(sendable, pending.readableBytes))!
            self.statistics.bytesSent += slice.readableBytes
            stream.pendingSend = pending.readableBytes > 0 ? pending : nil
            guard let frame = self.makeDataFrame(stream, slice) else { return }
            self.enqueue(frame)
        }
        if stream.finPending && stream.pendingSend == nil { self.sendFin(stream) }
    }

    /// A DATA frame for `slice`, compressed with the stream's own deflate context when compression is on and pays
    /// for this stream's data. Once bytes went through the compressor they must go out compressed: the peer's
    /// inflate context has to see every compressed block, in order.
    private func makeDataFrame(_ stream: StreamChannelHandler, _ slice: ByteBuffer) -> Frame? {
        let original = slice.readableBytes
        if self.machine.compressesData(), original > 0, !stream.compressionFailed,
            stream.compressionPolicy.shouldCompress(bytes: original)
        {
            do {
                if stream.compressor == nil {
                    let settings = self.configuration.compression
                    stream.compressor = try ZlibCompressor(
                        algorithm: .deflate,
                        configuration: ZlibConfiguration(
                            windowSize: settings.windowBits,
                            compressionLevel: settings.level,
                            memoryLevel: settings.memoryLevel
                        )
                    )
                }
                var input = slice
                let compressed = try input.compressStream(with: stream.compressor!, flush: .sync)
                stream.compressionPolicy.record(original: original, compressed: compressed.readableBytes)
                self.statistics.compressedFramesSent += 1
                self.statistics.payloadBytesOnWireSent += compressed.readableBytes
                return self.machine.withEstablished {
                    $0.mux.sendData(stream.id, payload: compressed, flags: .compressed, originalBytes: original)
                }
            } catch {
                // zlib failing here (out of memory) leaves the context unusable: stop compressing this stream.
                self.logger.error("stream \(stream.id): compression failed (\(error)); sending it uncompressed")
                stream.compressionFailed = true
                stream.compressor = nil
            }
        }
        self.statistics.rawFramesSent += 1
        self.statistics.payloadBytesOnWireSent += original
        return self.machine.withEstablished { $0.mux.sendData(stream.id, payload: slice) }
    }

    func logCompressionOutcome() {
        switch (self.role, self.configuration.compression.enabled, self.machine.compressionEnabled) {
        case (_, _, true):
            self.logger.info("compression on: zlib level \(self.configuration.compression.level), one context per stream")
        case (.client, true, false):
            self.logger.warning("compression off: the server does not agree to it (started with --no-compress)")
        case (.server, false, _):
            self.logger.debug("compression off: this server runs with --no-compress")
        default:
            self.logger.debug("compression off: not requested")
        }
    }

    private func sendFin(_ stream: StreamChannelHandler) {
        stream.finPending = false
        guard let (frame, complete) = self.machine.withEstablished({ $0.mux.localFinished(stream.id) }) ?? nil else { return }
        self.enqueue(frame)
        if complete { self.finishStream(stream) }
    }

    /// Whether `stream` may read its socket now. A stream held back by the session (not by its own credit) is
    /// remembered, and read again when the session can send.
    private func canRead(_ stream: StreamChannelHandler) -> Bool {
        let credit =
            (self.transport?.isWritable ?? false)
            ? self.machine.creditIfSessionHasRoom(stream.id, replayLimit: self.configuration.mux.sessionMemoryLimit) : nil
        guard let credit else {
            if !stream.awaitsSessionRoom {
                stream.awaitsSessionRoom = true
                self.waitingForRoom.append(stream)
            }
            return false
        }
        guard stream.pendingSend == nil, !stream.finPending else { return false }
        return credit > 0
    }

    private func readIfAllowed(_ stream: StreamChannelHandler) {
        if self.canRead(stream) { stream.requestRead() }
    }

    /// The session can send again: the streams it held back read again (only those: the others are waiting for
    /// their own credit, so this costs nothing per idle stream).
    func resumeReads() {
        guard !self.waitingForRoom.isEmpty else { return }
        let waiting = self.waitingForRoom
        self.waitingForRoom.removeAll(keepingCapacity: true)
        for stream in waiting {
            stream.awaitsSessionRoom = false
            if self.streams[stream.id] === stream { self.readIfAllowed(stream) }
        }
    }
}
