public import NIOCore

/// Seals the frames one side sends and opens the ones it receives, for one attachment of a session: AES-256-GCM
/// (the CPU's AES instructions, through OpenSSL's libcrypto: ``AESGCMContext``) under the keys of ``SealingKeys``.
///
/// Each SEALED frame holds whole frames. Its nonce is the count of SEALED frames sealed before it in this direction
/// of this attachment (4 zero bytes, then the count as a big-endian u64), never sent: the receiver opens with the
/// count it expects, so a frame dropped, repeated, reordered or made up by anyone on the path fails to open, as does
/// any altered byte. The frame's header is the additional data, so its length cannot be changed either. A new
/// attachment (a resumption) has new keys, so the counts start again at 0 without a nonce ever repeating.
///
/// Sealing and opening allocate nothing while the buffers they fill are let go of in time: the key of each direction
/// is expanded once, a sealed frame is written straight into the caller's buffer, and what is opened goes into the
/// storage of the last opened payload once nothing holds it any more.
public struct SessionCipher {
    /// Bytes of the AES-GCM tag after the ciphertext.
    public static let tagLength = AESGCMContext.tagLength
    /// A sender puts at most this much plaintext in one SEALED frame, unless a single frame is longer (a DATA
    /// frame of a large `--max-frame-kib`).
    public static let maximumPlaintextLength = 256 * 1024

    /// The longest SEALED payload a receiver accepts whose own frames are at most `maximumFrameLength` bytes.
    public static func maximumSealedPayloadLength(maximumFrameLength: Int) -> Int {
        max(Self.maximumPlaintextLength, maximumFrameLength) + Self.tagLength
    }

    private let sealing: AESGCMContext
    private let opening: AESGCMContext
    /// The last payload opened: its storage takes the next one once the frames read from it are let go of.
    private var lastOpened = ByteBuffer()
    /// The last message sealed by ``sealMessage(_:)``: its storage takes the next one once the transport has let
    /// go of it.
    private var lastSealed = ByteBuffer()
    /// Where parts too long for one SEALED frame are joined to be cut between frames (kept for its storage).
    private var joined = ByteBuffer()
    /// SEALED frames sealed so far: the next one's nonce.
    public private(set) var sealedCount: UInt64 = 0
    /// SEALED frames opened so far: the nonce the next one must have been sealed with.
    public private(set) var openedCount: UInt64 = 0

    /// - Parameter isClient: the client seals with the client-to-server key and opens with the other.
    public init(keys: SealingKeys, isClient: Bool) {
        self.sealing = AESGCMContext(key: isClient ? keys.clientToServer : keys.serverToClient, sealing: true)
        self.opening = AESGCMContext(key: isClient ? keys.serverToClient : keys.clientToServer, sealing: false)
    }

    /// Appends one SEALED frame holding `plaintext` (whole encoded frames) to `buffer`.
    public mutating func seal(_ plaintext: ByteBuffer, into buffer: inout ByteBuffer) {
        self.seal(pieces: CollectionOfOne(plaintext), into: &buffer)
    }

    /// Appends one SEALED frame holding `pieces` in order (together, whole encoded frames) to `buffer`: the frame
    /// that sealing them joined would give, made in one pass over them without joining them first.
    public mutating func seal<Pieces: Collection<ByteBuffer>>(pieces: Pieces, into buffer: inout ByteBuffer) {
        precondition(self.sealedCount < UInt64.max, "a session attachment sealed 2^64 frames")
        let length = pieces.reduce(0) { $0 + $1.readableBytes }
        let payloadLength = length + Self.tagLength
        buffer.reserveCapacity(minimumWritableBytes: FrameEncoder.headerLength + payloadLength)
        Self.withHeader(payloadLength: payloadLength) { header in
            buffer.writeBytes(header)
            Self.withNonce(self.sealedCount) { nonce in
                _ = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: payloadLength) { output in
                    self.sealing.beginSealing(nonce: nonce, authenticating: header)
                    var offset = 0
                    for piece in pieces {
                        piece.withUnsafeReadableBytes { input in
                            self.sealing.sealPiece(input, into: UnsafeMutableRawBufferPointer(rebasing: output[offset..<offset + input.count]))
                            offset += input.count
                        }
                    }
                    self.sealing.endSealing(tag: UnsafeMutableRawBufferPointer(rebasing: output[length..<payloadLength]))
                    return payloadLength
                }
            }
        }
        self.sealedCount += 1
    }

    /// The next transport message: `parts` in order (together, whole encoded frames; a batch's headers and the
    /// payloads written after them) in SEALED frames as ``sealFrames(_:into:)`` cuts them. Parts that fit in one
    /// SEALED frame, as a batch does, are sealed as they lie; longer ones are joined first. The message is written
    /// into the storage of the one sealed before it, once the transport has let go of that.
    public mutating func sealMessage(_ parts: [ByteBuffer]) -> ByteBuffer {
        self.sealParts(parts)
    }

    /// The next transport message holding `message` (whole encoded frames), as ``sealMessage(_:)-([ByteBuffer])``
    /// makes it.
    public mutating func sealMessage(_ message: ByteBuffer) -> ByteBuffer {
        self.sealParts(CollectionOfOne(message))
    }

    // Generic inside the module only, where each call is specialized for its collection: a public generic is called
    // unspecialized from the session, and looked up its types' metadata at run time on every message.
    private mutating func sealParts<Parts: Collection<ByteBuffer>>(_ parts: Parts) -> ByteBuffer {
        let length = parts.reduce(0) { $0 + $1.readableBytes }
        let sealedFrames = length / Self.maximumPlaintextLength + 1
        // `clear(minimumCapacity:)` allocates only while the transport still holds the last message.
        var sealed = self.lastSealed
        self.lastSealed = ByteBuffer()
        sealed.clear(minimumCapacity: length + sealedFrames * (FrameEncoder.headerLength + Self.tagLength))
        if length == 0 {
            // Nothing to seal: an empty message, as an unsealed one would be.
        } else if length <= Self.maximumPlaintextLength {
            self.seal(pieces: parts, into: &sealed)
        } else if parts.count == 1 {
            self.sealFrames(parts.first!, into: &sealed)
        } else {
            self.joined.clear(minimumCapacity: length)
            for part in parts { self.joined.writeImmutableBuffer(part) }
            self.sealFrames(self.joined, into: &sealed)
        }
        self.lastSealed = sealed
        return sealed
    }

    /// Appends `frames` (whole encoded frames) to `buffer` as SEALED frames of at most ``maximumPlaintextLength``
    /// bytes of them each, cut between frames (a frame longer than that alone in one).
    public mutating func sealFrames(_ frames: ByteBuffer, into buffer: inout ByteBuffer) {
        var rest = frames
        while rest.readableBytes > Self.maximumPlaintextLength {
            var length = 0
            while length < rest.readableBytes {
                let frameLength = FrameEncoder.headerLength + Int(rest.getInteger(at: rest.readerIndex + length + 6, as: UInt32.self)!)
                if length > 0 && length + frameLength > Self.maximumPlaintextLength { break }
                length += frameLength
            }
            self.seal(rest.readSlice(length: min(length, rest.readableBytes))!, into: &buffer)
        }
        if rest.readableBytes > 0 { self.seal(rest, into: &buffer) }
    }

    /// Opens the payload of a SEALED frame: the frames it holds, encoded. Throws when it was not sealed, as the
    /// next frame, by the peer of this attachment.
    public mutating func open(_ payload: ByteBuffer) throws(SessionCipherError) -> ByteBuffer {
        guard payload.readableBytes >= Self.tagLength else { throw .tooShort }
        let length = payload.readableBytes - Self.tagLength
        // `clear(minimumCapacity:)` allocates only while frames read from the last payload are still held.
        var opened = self.lastOpened
        self.lastOpened = ByteBuffer()
        opened.clear(minimumCapacity: length)
        var verified = false
        Self.withHeader(payloadLength: payload.readableBytes) { header in
            Self.withNonce(self.openedCount) { nonce in
                payload.withUnsafeReadableBytes { input in
                    _ = opened.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { output in
                        verified = self.opening.open(
                            nonce: nonce, authenticating: header,
                            UnsafeRawBufferPointer(rebasing: input[..<length]),
                            into: UnsafeMutableRawBufferPointer(rebasing: output[..<length]),
                            tag: UnsafeRawBufferPointer(rebasing: input[length...])
                        )
                        return verified ? length : 0
                    }
                }
            }
        }
        guard verified else { throw .authenticationFailed(frame: self.openedCount) }
        self.openedCount += 1
        self.lastOpened = opened
        return opened
    }

    /// Calls `body` with the 10-byte frame header of a SEALED frame with this payload length (the additional
    /// authenticated data), laid out on the stack.
    private static func withHeader<Result>(payloadLength: Int, _ body: (UnsafeRawBufferPointer) -> Result) -> Result {
        withUnsafeTemporaryAllocation(byteCount: FrameEncoder.headerLength, alignment: 1) { header in
            header.initializeMemory(as: UInt8.self, repeating: 0)
            header[0] = FrameType.sealed.rawValue
            header.storeBytes(of: UInt32(payloadLength).bigEndian, toByteOffset: 6, as: UInt32.self)
            return body(UnsafeRawBufferPointer(header))
        }
    }

    /// Calls `body` with the nonce of SEALED frame number `count`: 4 zero bytes, then `count` big-endian.
    private static func withNonce<Result>(_ count: UInt64, _ body: (UnsafeRawBufferPointer) -> Result) -> Result {
        withUnsafeTemporaryAllocation(byteCount: AESGCMContext.nonceLength, alignment: 1) { bytes in
            bytes.initializeMemory(as: UInt8.self, repeating: 0)
            bytes.storeBytes(of: count.bigEndian, toByteOffset: 4, as: UInt64.self)
            return body(UnsafeRawBufferPointer(bytes))
        }
    }
}

/// Why a SEALED frame did not open.
public enum SessionCipherError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Shorter than its tag.
    case tooShort
    /// The tag does not verify for the frame expected next (number `frame` of this attachment): a byte was
    /// altered, or a frame was dropped, repeated, reordered or injected on the path.
    case authenticationFailed(frame: UInt64)

    public var description: String {
        switch self {
        case .tooShort:
            "a sealed frame is shorter than its tag"
        case .authenticationFailed(let frame):
            "sealed frame \(frame) of this connection did not verify: something on the path altered, dropped, repeated or injected data"
        }
    }
}
