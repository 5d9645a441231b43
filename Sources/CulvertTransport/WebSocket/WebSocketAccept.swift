import Crypto

/// The `Sec-WebSocket-Accept` value of RFC 6455 section 4.2.2.
enum WebSocketAccept {
    /// `base64(SHA-1(key + GUID))`.
    static func value(forKey key: String) -> String {
        let digest = Insecure.SHA1.hash(data: Array((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").utf8))
        return Base64.encode(Array(digest))
    }
}
