import Crypto
import struct Foundation.Data
public import NIOCore

/// Seals the frames one side sends and opens the ones it receives, for one attachment of a session: AES-256-GCM
/// (the CPU's AES instructions, through BoringSSL) under the keys of ``SealingKeys``.
///
/// Each SEALED frame holds whole frames. Its nonce is the count of SEALED frames sealed before it in this direction
/// of this attachment (4 zero bytes, then the count as a big-endian u64), never sent: the receiver opens with the
/// count it expects, so a frame dropped, repeated, reordered or made up by anyone on the path fails to open, as does
/// any altered byte. The frame's header is the additional data, so its length cannot be changed either. A new
/// attachment (a resumption) has new keys, so the counts start again at 0 without a nonce ever repeating.
public struct SessionCipher: Sendable {
    /// Bytes of the AES-GCM tag after the ciphertext.
    public static let tagLength = 16
    /// A sender puts at most this much plaintext in one SEALED frame, unless a single frame is longer (a DATA
    /// frame of a large `--max-frame-kib`).
    public static let maximumPlaintextLength = 256 * 1024

    /// The longest SEALED payload a receiver accepts whose own frames are at most `maximumFrameLength` bytes.
    public static func maximumSealedPayloadLength(maximumFrameLength: Int) -> Int {
        max(Self.maximumPlaintextLength, maximumFrameLength) + Self.tagLength
    }

    private let sealingKey: SymmetricKey
    private let openingKey: SymmetricKey
    /// SEALED frames sealed so far: the next one's nonce.
    public private(set) var sealedCount: UInt64 = 0
    /// SEALED frames opened so far: the nonce the next one must have been sealed with.
    public private(set) var openedCount: UInt64 = 0

    /// - Parameter isClient: the client seals with the client-to-server key and opens with the other.
    public init(keys: SealingKeys, isClient: Bool) {
        let clientToServer = SymmetricKey(data: keys.clientToServer)
        let serverToClient = SymmetricKey(data: keys.serverToClient)
        self.sealingKey = isClient ? clientToServer : serverToClient
        self.openingKey = isClient ? serverToClient : clientToServer
    }

    /// Appends one SEALED frame holding `plaintext` (whole encoded frames) to `buffer`.
    public mutating func seal(_ plaintext: ByteBuffer, into buffer: inout ByteBuffer) {
        precondition(self.sealedCount < UInt64.max, "a session attachment sealed 2^64 frames")
        let payloadLength = plaintext.readableBytes + Self.tagLength
        // Header and nonce on the stack: swift-crypto's own buffers are all a seal allocates.
        let box = Self.withHeader(payloadLength: payloadLength) { header in
            Self.withNonce(self.sealedCount) { nonce in
                plaintext.withUnsafeReadableBytes { bytes in
                    // Only a wrong key or nonce size makes sealing throw; both are fixed here.
                    try! AES.GCM.seal(bytes, using: self.sealingKey, nonce: nonce, authenticating: header)
                }
            }
        }
        self.sealedCount += 1
        buffer.reserveCapacity(minimumWritableBytes: FrameEncoder.headerLength + payloadLength)
        buffer.writeInteger(FrameType.sealed.rawValue)
        buffer.writeInteger(UInt8(0))
        buffer.writeInteger(UInt32(0))
        buffer.writeInteger(UInt32(payloadLength))
        box.ciphertext.withUnsafeBytes { _ = buffer.writeBytes($0) }
        box.tag.withUnsafeBytes { _ = buffer.writeBytes($0) }
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
        let ciphertextLength = payload.readableBytes - Self.tagLength
        let opened: ByteBuffer? = Self.withHeader(payloadLength: payload.readableBytes) { header in
            Self.withNonce(self.openedCount) { nonce in
                payload.withUnsafeReadableBytes { bytes in
                    guard let box = try? AES.GCM.SealedBox(
                        nonce: nonce,
                        ciphertext: UnsafeRawBufferPointer(rebasing: bytes[..<ciphertextLength]),
                        tag: UnsafeRawBufferPointer(rebasing: bytes[ciphertextLength...])
                    ), let plaintext = try? AES.GCM.open(box, using: self.openingKey, authenticating: header)
                    else { return nil }
                    return plaintext.withUnsafeBytes { ByteBuffer(bytes: $0) }
                }
            }
        }
        guard let opened else { throw .authenticationFailed(frame: self.openedCount) }
        self.openedCount += 1
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
    private static func withNonce<Result>(_ count: UInt64, _ body: (AES.GCM.Nonce) -> Result) -> Result {
        withUnsafeTemporaryAllocation(byteCount: 12, alignment: 1) { bytes in
            bytes.initializeMemory(as: UInt8.self, repeating: 0)
            bytes.storeBytes(of: count.bigEndian, toByteOffset: 4, as: UInt64.self)
            // 12 bytes are always a valid GCM nonce (held inline, not allocated).
            return body(try! AES.GCM.Nonce(data: UnsafeRawBufferPointer(bytes)))
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
