// AES-256-GCM with the key scheduled once per direction, through OpenSSL's libcrypto (Debian's libssl-dev):
// swift-crypto's AES.GCM schedules the key and allocates its own buffers on every call, and its BoringSSL is not a
// product of that package. Only what SessionCipher needs is exposed, so Swift never sees OpenSSL's headers.
#ifndef CCULVERT_AES_GCM_H
#define CCULVERT_AES_GCM_H

#include <stddef.h>
#include <stdint.h>

/// One direction's AES-256-GCM context: its key is expanded once, each message only sets its nonce.
typedef struct culvert_aes_gcm culvert_aes_gcm;

/// A context for `key` (32 bytes) that seals (`sealing` non-zero) or opens; NULL when libcrypto cannot make one.
culvert_aes_gcm *culvert_aes_gcm_new(const uint8_t *key, int sealing);

void culvert_aes_gcm_free(culvert_aes_gcm *context);

/// Seals a message, which may come in several pieces: begin under the 12-byte `nonce`, authenticating `aad`; encrypt
/// each piece in order (any lengths; `ciphertext` as long as `plaintext`, and may be the same memory); then end,
/// writing the 16-byte tag. The result is the same as sealing the pieces joined. Each returns 1, or 0 on failure.
int culvert_aes_gcm_seal_begin(culvert_aes_gcm *context, const uint8_t *nonce, const uint8_t *aad, size_t aad_length);
int culvert_aes_gcm_seal_update(culvert_aes_gcm *context, const uint8_t *plaintext, size_t length, uint8_t *ciphertext);
int culvert_aes_gcm_seal_end(culvert_aes_gcm *context, uint8_t *tag);

/// Decrypts `length` bytes of `ciphertext` into `plaintext` and checks the 16-byte `tag` over it and `aad`.
/// Returns 1 only when the tag verifies; 0 otherwise (then `plaintext` holds nothing to use).
int culvert_aes_gcm_open(culvert_aes_gcm *context, const uint8_t *nonce, const uint8_t *aad, size_t aad_length,
                         const uint8_t *ciphertext, size_t length, uint8_t *plaintext, const uint8_t *tag);

#endif
