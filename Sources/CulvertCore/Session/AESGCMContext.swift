internal import CCulvertAESGCM

/// One direction of a ``SessionCipher``: AES-256-GCM with its key expanded once, sealing or opening in place in the
/// caller's memory (OpenSSL's libcrypto, which uses the CPU's AES and carry-less multiply instructions). Neither
/// call allocates, where swift-crypto's `AES.GCM` expands the key and allocates three buffers for every message.
final class AESGCMContext {
    static let keyLength = 32
    static let nonceLength = 12
    static let tagLength = 16

    private let context: OpaquePointer

    /// - Parameter sealing: a context seals or opens, never both.
    init(key: [UInt8], sealing: Bool) {
        precondition(key.count == Self.keyLength, "AES-256-GCM takes a 32-byte key")
        guard let context = key.withUnsafeBufferPointer({ culvert_aes_gcm_new($0.baseAddress, sealing ? 1 : 0) }) else {
            // Only a failed allocation inside libcrypto gets here.
            fatalError("libcrypto could not make an AES-256-GCM context")
        }
        self.context = context
    }

    deinit {
        culvert_aes_gcm_free(self.context)
    }

    /// Starts sealing a message under `nonce`, authenticating `aad`; its pieces follow with ``sealPiece(_:into:)``
    /// in order, then ``endSealing(tag:)``. The result is the same as sealing the pieces joined.
    func beginSealing(nonce: UnsafeRawBufferPointer, authenticating aad: UnsafeRawBufferPointer) {
        precondition(nonce.count == Self.nonceLength)
        // Sealing fails only for lengths over 2 GiB, which no SEALED frame has.
        // The call stays outside the precondition, whose condition an -Ounchecked build need not evaluate.
        let begun = culvert_aes_gcm_seal_begin(self.context, Self.bytes(nonce), Self.bytes(aad), aad.count)
        precondition(begun == 1, "AES-256-GCM sealing failed")
    }

    /// Encrypts the next piece of the message into `ciphertext` (as long).
    func sealPiece(_ plaintext: UnsafeRawBufferPointer, into ciphertext: UnsafeMutableRawBufferPointer) {
        precondition(ciphertext.count == plaintext.count)
        let sealed = culvert_aes_gcm_seal_update(
            self.context, Self.bytes(plaintext), plaintext.count, ciphertext.baseAddress?.assumingMemoryBound(to: UInt8.self)
        )
        precondition(sealed == 1, "AES-256-GCM sealing failed")
    }

    /// Completes the message and writes its tag to `tag`.
    func endSealing(tag: UnsafeMutableRawBufferPointer) {
        precondition(tag.count == Self.tagLength)
        let ended = culvert_aes_gcm_seal_end(self.context, tag.baseAddress?.assumingMemoryBound(to: UInt8.self))
        precondition(ended == 1, "AES-256-GCM sealing failed")
    }

    /// Decrypts `ciphertext` into `plaintext` (as long); false when `tag` does not verify (then `plaintext` holds
    /// nothing to use).
    func open(
        nonce: UnsafeRawBufferPointer,
        authenticating aad: UnsafeRawBufferPointer,
        _ ciphertext: UnsafeRawBufferPointer,
        into plaintext: UnsafeMutableRawBufferPointer,
        tag: UnsafeRawBufferPointer
    ) -> Bool {
        precondition(nonce.count == Self.nonceLength && tag.count == Self.tagLength && ciphertext.count == plaintext.count)
        return culvert_aes_gcm_open(
            self.context, Self.bytes(nonce), Self.bytes(aad), aad.count, Self.bytes(ciphertext), ciphertext.count,
            plaintext.baseAddress?.assumingMemoryBound(to: UInt8.self), Self.bytes(tag)
        ) == 1
    }

    private static func bytes(_ buffer: UnsafeRawBufferPointer) -> UnsafePointer<UInt8>? {
        buffer.baseAddress?.assumingMemoryBound(to: UInt8.self)
    }
}
