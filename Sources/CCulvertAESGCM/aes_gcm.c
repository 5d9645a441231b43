#include "CCulvertAESGCM.h"

#include <limits.h>
#include <openssl/evp.h>

struct culvert_aes_gcm {
    EVP_CIPHER_CTX *cipher;
    int sealing;
};

culvert_aes_gcm *culvert_aes_gcm_new(const uint8_t *key, int sealing) {
    culvert_aes_gcm *context = OPENSSL_zalloc(sizeof(*context));
    if (context == NULL) return NULL;
    context->sealing = sealing;
    context->cipher = EVP_CIPHER_CTX_new();
    // The key is expanded here, once; the IV length is GCM's default, 12 bytes.
    int ok = context->cipher != NULL
        && (sealing ? EVP_EncryptInit_ex(context->cipher, EVP_aes_256_gcm(), NULL, key, NULL)
                    : EVP_DecryptInit_ex(context->cipher, EVP_aes_256_gcm(), NULL, key, NULL));
    if (!ok) {
        culvert_aes_gcm_free(context);
        return NULL;
    }
    return context;
}

void culvert_aes_gcm_free(culvert_aes_gcm *context) {
    if (context == NULL) return;
    EVP_CIPHER_CTX_free(context->cipher);
    OPENSSL_free(context);
}

int culvert_aes_gcm_seal_begin(culvert_aes_gcm *context, const uint8_t *nonce, const uint8_t *aad, size_t aad_length) {
    if (!context->sealing || aad_length > INT_MAX) return 0;
    int written = 0;
    // A NULL cipher and key keep the expanded key: only the nonce is new.
    if (!EVP_EncryptInit_ex(context->cipher, NULL, NULL, NULL, nonce)) return 0;
    return aad_length == 0 || EVP_EncryptUpdate(context->cipher, NULL, &written, aad, (int)aad_length);
}

int culvert_aes_gcm_seal_update(culvert_aes_gcm *context, const uint8_t *plaintext, size_t length, uint8_t *ciphertext) {
    if (!context->sealing || length > INT_MAX) return 0;
    if (length == 0) return 1;
    int written = 0;
    // GCM is a stream mode: OpenSSL keeps a partial block between calls and writes every byte it is given.
    return EVP_EncryptUpdate(context->cipher, ciphertext, &written, plaintext, (int)length) && (size_t)written == length;
}

int culvert_aes_gcm_seal_end(culvert_aes_gcm *context, uint8_t *tag) {
    if (!context->sealing) return 0;
    uint8_t none[16];
    int written = 0;
    // GCM's final step writes nothing (every byte went out in an update); it completes the tag.
    if (!EVP_EncryptFinal_ex(context->cipher, none, &written) || written != 0) return 0;
    return EVP_CIPHER_CTX_ctrl(context->cipher, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1;
}

int culvert_aes_gcm_open(culvert_aes_gcm *context, const uint8_t *nonce, const uint8_t *aad, size_t aad_length,
                         const uint8_t *ciphertext, size_t length, uint8_t *plaintext, const uint8_t *tag) {
    if (context->sealing || length > INT_MAX || aad_length > INT_MAX) return 0;
    EVP_CIPHER_CTX *cipher = context->cipher;
    int written = 0;
    if (!EVP_DecryptInit_ex(cipher, NULL, NULL, NULL, nonce)) return 0;
    if (aad_length > 0 && !EVP_DecryptUpdate(cipher, NULL, &written, aad, (int)aad_length)) return 0;
    if (length > 0 && !EVP_DecryptUpdate(cipher, plaintext, &written, ciphertext, (int)length)) return 0;
    // The expected tag is set before the final step, which checks it (in constant time).
    if (EVP_CIPHER_CTX_ctrl(cipher, EVP_CTRL_GCM_SET_TAG, 16, (void *)tag) != 1) return 0;
    return EVP_DecryptFinal_ex(cipher, plaintext + written, &written) > 0;
}
