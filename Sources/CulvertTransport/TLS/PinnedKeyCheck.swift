/// What a pinned connection's certificate check saw: the pin it wanted and the key the server presented. The TLS
/// handshake only reports "certificate verify failed"; with this the message can show both keys. It lives in one
/// connection's pipeline, on its event loop (the verification callback and the handshake waiter both run there).
final class PinnedKeyCheck {
    let expected: PublicKeyPin
    /// The pin of the leaf certificate's key, once the server presented one.
    var presented: PublicKeyPin?

    init(expected: PublicKeyPin) {
        self.expected = expected
    }

    /// Why the handshake failed, when it failed because the key is not the pinned one (nil otherwise).
    var mismatchDescription: String? {
        guard let presented, presented != self.expected else { return nil }
        return "the server's key \(presented) does not match --tls-pin \(self.expected); a TLS-inspecting proxy in the path "
            + "(one that presents its own certificate) does this, or the server's key changed"
    }
}
