import NIOCore

/// The receiving side of end-to-end protection on one attachment. Every frame off the transport must be SEALED and
/// open as the next one the peer sealed (``SessionCipher/open(_:)``), and what it holds must be whole frames, none of
/// them SEALED. The frames come out one at a time, so that the driver can stop between them: one may end the
/// session or its attachment.
public struct SealedFrameReader {
    private var decoder: FrameDecoder
    /// What is left of the payload opened last.
    private var plaintext = ByteBuffer()

    /// - Parameter maximumPayloadLength: the longest payload a frame inside a SEALED frame may have.
    public init(maximumPayloadLength: Int) {
        self.decoder = FrameDecoder(maximumPayloadLength: maximumPayloadLength)
    }

    /// Opens `frame`, which must be SEALED, with `cipher`; its frames come from ``next()``. Whatever was left of the
    /// frame opened before is dropped.
    public mutating func open(_ frame: Frame, with cipher: inout SessionCipher) throws(SealingViolation) {
        self.plaintext = ByteBuffer()
        guard case .sealed(let payload) = frame else { throw .unsealed(frame.type) }
        do {
            self.plaintext = try cipher.open(payload)
        } catch {
            throw .notOpened(error)
        }
    }

    /// The next frame the last opened one holds; nil once it holds no more. Throws ``SealingViolation`` when it
    /// holds a SEALED frame or ends inside a frame, and ``FrameDecodingError`` for a frame that is not well formed.
    public mutating func next() throws -> Frame? {
        guard let frame = try self.decoder.decode(buffer: &self.plaintext) else {
            guard self.plaintext.readableBytes == 0 else { throw SealingViolation.endsInsideFrame }
            return nil
        }
        if case .sealed = frame { throw SealingViolation.nested }
        return frame
    }
}

/// What came over the transport was not what the peer sealed.
public enum SealingViolation: Error, Hashable, Sendable, CustomStringConvertible {
    /// A frame that is not SEALED arrived after the handshake.
    case unsealed(FrameType)
    /// A SEALED frame did not open as the next one expected.
    case notOpened(SessionCipherError)
    /// A SEALED frame holds another.
    case nested
    /// A SEALED frame ends inside a frame.
    case endsInsideFrame

    public var description: String {
        switch self {
        case .unsealed(let type): "an unsealed \(type) frame arrived after the handshake: something on the path injected it"
        case .notOpened(let error): error.description
        case .nested: "a sealed frame holds another"
        case .endsInsideFrame: "a sealed frame ends inside a frame"
        }
    }
}
