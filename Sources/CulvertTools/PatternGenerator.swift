/// Deterministic pseudo-random bytes (xorshift64*), so transfers are repeatable and not trivially compressible.
public struct PatternGenerator: Sendable {
    private var state: UInt64

    public init(seed: UInt64) {
        self.state = seed == 0 ? 0x9E37_79B9_7F4A_7C15 : seed
    }

    /// The next `count` bytes.
    public mutating func next(_ count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        bytes.withUnsafeMutableBytes { raw in
            var index = 0
            while index < count {
                self.state ^= self.state >> 12
                self.state ^= self.state << 25
                self.state ^= self.state >> 27
                var word = (self.state &* 0x2545_F491_4F6C_DD1D).littleEndian
                let chunk = min(8, count - index)
                withUnsafeBytes(of: &word) { wordBytes in
                    raw.baseAddress!.advanced(by: index).copyMemory(from: wordBytes.baseAddress!, byteCount: chunk)
                }
                index += chunk
            }
        }
        return bytes
    }
}
