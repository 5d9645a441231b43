/// Bytes written as lowercase hex, two digits each: session ids, tags, token hashes and generated tokens in logs,
/// headers and files. One spelling for the modules above the transport, so the same bytes always print the same way.
extension Sequence where Element == UInt8 {
    public var lowercaseHex: String {
        self.map { byte in byte < 16 ? "0" + String(byte, radix: 16) : String(byte, radix: 16) }.joined()
    }
}
