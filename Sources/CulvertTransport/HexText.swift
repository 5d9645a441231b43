/// Bytes as lowercase hex, two digits each: digests, nonces, cookie values and connection ids. The transport layer
/// depends on nothing above it, so it keeps this one-liner's twin of CulvertCore's `lowercaseHex` rather than
/// importing the protocol module for it.
extension Sequence where Element == UInt8 {
    var lowercaseHex: String {
        self.map { byte in byte < 16 ? "0" + String(byte, radix: 16) : String(byte, radix: 16) }.joined()
    }
}
