/// MD4 (RFC 1320), which NTLM's NT hash is (MD4 of the UTF-16LE password) and nothing else here uses.
///
/// Hand-written because swift-crypto, rightly, offers no MD4; it hashes a password a few dozen bytes long once per
/// NTLM handshake, so it is written for clarity, not speed. Checked against RFC 1320's test suite.
enum MD4 {
    static func hash(_ message: [UInt8]) -> [UInt8] {
        var state: (UInt32, UInt32, UInt32, UInt32) = (0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476)
        var padded = message
        padded.append(0x80)
        while padded.count % 64 != 56 { padded.append(0) }
        let bitLength = UInt64(message.count) &* 8
        for index in 0..<8 { padded.append(UInt8(truncatingIfNeeded: bitLength >> (8 * UInt64(index)))) }

        for blockStart in stride(from: 0, to: padded.count, by: 64) {
            var words = [UInt32](repeating: 0, count: 16)
            for index in 0..<16 {
                let offset = blockStart + index * 4
                words[index] =
                    UInt32(padded[offset]) | UInt32(padded[offset + 1]) << 8 | UInt32(padded[offset + 2]) << 16
                    | UInt32(padded[offset + 3]) << 24
            }
            var (a, b, c, d) = state
            func rotate(_ value: UInt32, _ count: UInt32) -> UInt32 { value << count | value >> (32 - count) }
            // Round 1: F(x, y, z) = xy | ~x z
            for index in 0..<16 {
                let f = (b & c) | (~b & d)
                let shift: UInt32 = [3, 7, 11, 19][index % 4]
                (a, b, c, d) = (d, rotate(a &+ f &+ words[index], shift), b, c)
            }
            // Round 2: G(x, y, z) = xy | xz | yz, words in column order, + 0x5A827999
            let round2 = [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15]
            for index in 0..<16 {
                let g = (b & c) | (b & d) | (c & d)
                let shift: UInt32 = [3, 5, 9, 13][index % 4]
                (a, b, c, d) = (d, rotate(a &+ g &+ words[round2[index]] &+ 0x5a82_7999, shift), b, c)
            }
            // Round 3: H(x, y, z) = x ^ y ^ z, words in bit-reversed order, + 0x6ED9EBA1
            let round3 = [0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15]
            for index in 0..<16 {
                let h = b ^ c ^ d
                let shift: UInt32 = [3, 9, 11, 15][index % 4]
                (a, b, c, d) = (d, rotate(a &+ h &+ words[round3[index]] &+ 0x6ed9_eba1, shift), b, c)
            }
            state = (state.0 &+ a, state.1 &+ b, state.2 &+ c, state.3 &+ d)
        }
        return [state.0, state.1, state.2, state.3].flatMap { word in (0..<4).map { UInt8(truncatingIfNeeded: word >> (8 * UInt32($0))) } }
    }
}
