import Crypto
import Foundation

/// NTLM proxy authentication, NTLMv2 only (MS-NLMP), as curl and cntlm speak it: a NEGOTIATE message, the
/// proxy's CHALLENGE read, and the AUTHENTICATE message computed from the password's NT hash. NTLM authenticates a
/// connection, not a request: the three messages go on one kept-alive connection (``ProxyAuthenticationHandler``,
/// ``ProxyConnectHandler``).
///
/// Hand-written on swift-crypto's HMAC-MD5 (and ``MD4``): no package on the machine speaks NTLM. NTLMv1 and LM are
/// not offered (broken); no MIC is sent (the proxy's target info does not ask for one in its MsvAvFlags here).
public enum NTLMAuthentication {
    /// The flags culvert asks for: Unicode, request target, NTLM, always sign, extended session security, 128-bit.
    static let negotiateFlags: UInt32 = 0x0000_0001 | 0x0000_0004 | 0x0000_0200 | 0x0000_8000 | 0x0008_0000 | 0x2000_0000

    static let signature: [UInt8] = Array("NTLMSSP".utf8) + [0]

    /// The proxy's CHALLENGE message (type 2).
    public struct Challenge: Hashable, Sendable {
        public var flags: UInt32
        public var serverChallenge: [UInt8]
        public var targetInfo: [UInt8]

        /// nil when `bytes` is not a well-formed CHALLENGE message.
        public init?(_ bytes: [UInt8]) {
            guard bytes.count >= 32, Array(bytes[0..<8]) == NTLMAuthentication.signature, Self.uint32(bytes, 8) == 2 else { return nil }
            self.flags = Self.uint32(bytes, 20)
            self.serverChallenge = Array(bytes[24..<32])
            // Target info only where the flags say there is one (NEGOTIATE_TARGET_INFO), as curl reads it: some
            // proxies' minimal challenges (squid's ntlm_fake_auth) leave garbage in its fields otherwise.
            if self.flags & 0x0080_0000 != 0, bytes.count >= 48 {
                let length = Int(Self.uint16(bytes, 40))
                let offset = Int(Self.uint32(bytes, 44))
                guard offset + length <= bytes.count else { return nil }
                self.targetInfo = Array(bytes[offset..<(offset + length)])
            } else {
                self.targetInfo = []
            }
        }

        /// The CHALLENGE in the base64 token of a `Proxy-Authenticate: NTLM <token>`.
        public init?(fromBase64 token: String) {
            guard let data = Data(base64Encoded: token) else { return nil }
            self.init(Array(data))
        }

        /// The timestamp the proxy's target info carries (MsvAvTimestamp), as a FILETIME.
        var timestamp: [UInt8]? {
            var offset = 0
            while offset + 4 <= self.targetInfo.count {
                let id = Self.uint16(self.targetInfo, offset)
                let length = Int(Self.uint16(self.targetInfo, offset + 2))
                guard id != 0, offset + 4 + length <= self.targetInfo.count else { return nil }
                if id == 7, length == 8 { return Array(self.targetInfo[(offset + 4)..<(offset + 12)]) }
                offset += 4 + length
            }
            return nil
        }

        static func uint16(_ bytes: [UInt8], _ offset: Int) -> UInt16 { UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8 }
        static func uint32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
            UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8 | UInt32(bytes[offset + 2]) << 16 | UInt32(bytes[offset + 3]) << 24
        }
    }

    /// The NEGOTIATE message (type 1): no domain or workstation named.
    public static func negotiateMessage() -> [UInt8] {
        var message = Self.signature
        Self.append(UInt32(1), to: &message)
        Self.append(Self.negotiateFlags, to: &message)
        message += [UInt8](repeating: 0, count: 16)  // empty domain and workstation fields
        return message
    }

    /// `DOMAIN\USER` split (no backslash: no domain).
    public static func split(_ username: String) -> (domain: String, user: String) {
        guard let backslash = username.firstIndex(of: "\\") else { return ("", username) }
        return (String(username[..<backslash]), String(username[username.index(after: backslash)...]))
    }

    /// NTOWFv2: HMAC-MD5 keyed with the NT hash (MD4 of the UTF-16LE password) over the uppercased user and the
    /// domain, UTF-16LE.
    static func responseKey(user: String, domain: String, password: String) -> [UInt8] {
        let ntHash = MD4.hash(Self.utf16(password))
        return Self.hmacMD5(key: ntHash, Self.utf16(user.uppercased() + domain))
    }

    /// The NTLMv2 responses (MS-NLMP §3.3.2): the NT response (NTProofStr and the blob it covers), the LMv2
    /// response (zeros when the proxy sent a timestamp, as §3.1.5.1.2 asks), and the session base key.
    static func responses(
        responseKey: [UInt8], challenge: Challenge, clientChallenge: [UInt8], timestamp: [UInt8]
    ) -> (nt: [UInt8], lm: [UInt8], sessionBaseKey: [UInt8]) {
        let blob = [1, 1, 0, 0, 0, 0, 0, 0] + timestamp + clientChallenge + [0, 0, 0, 0] + challenge.targetInfo + [0, 0, 0, 0]
        let proof = Self.hmacMD5(key: responseKey, challenge.serverChallenge + blob)
        let lm =
            challenge.timestamp != nil
            ? [UInt8](repeating: 0, count: 24) : Self.hmacMD5(key: responseKey, challenge.serverChallenge + clientChallenge) + clientChallenge
        return (proof + blob, lm, Self.hmacMD5(key: responseKey, proof))
    }

    /// The AUTHENTICATE message (type 3) answering `challenge` for `username` (`DOMAIN\USER` or `USER`); the
    /// timestamp is the proxy's when its target info has one, else `timestamp`, else now (as a FILETIME).
    public static func authenticateMessage(
        challenge: Challenge, username: String, password: String, workstation: String = "",
        clientChallenge: [UInt8] = (0..<8).map { _ in UInt8.random(in: 0...255) }, timestamp: [UInt8]? = nil
    ) -> [UInt8] {
        let (domain, user) = Self.split(username)
        let timestamp = challenge.timestamp ?? timestamp ?? Self.fileTime(Date())
        let key = Self.responseKey(user: user, domain: domain, password: password)
        let (nt, lm, _) = Self.responses(responseKey: key, challenge: challenge, clientChallenge: clientChallenge, timestamp: timestamp)
        let fields: [[UInt8]] = [lm, nt, Self.utf16(domain), Self.utf16(user), Self.utf16(workstation), []]
        let headerLength = 64
        var message = Self.signature
        Self.append(UInt32(3), to: &message)
        var offset = headerLength
        for field in fields {
            Self.append(UInt16(field.count), to: &message)
            Self.append(UInt16(field.count), to: &message)
            Self.append(UInt32(offset), to: &message)
            offset += field.count
        }
        Self.append(Self.negotiateFlags & (challenge.flags | 0x0000_0001), to: &message)
        for field in fields { message += field }
        return message
    }

    /// 100-nanosecond intervals since 1601-01-01, little-endian.
    static func fileTime(_ date: Date) -> [UInt8] {
        let intervals = UInt64(max(0, (date.timeIntervalSince1970 + 11_644_473_600) * 10_000_000))
        return (0..<8).map { UInt8(truncatingIfNeeded: intervals >> (8 * UInt64($0))) }
    }

    static func utf16(_ text: String) -> [UInt8] { text.utf16.flatMap { [UInt8(truncatingIfNeeded: $0), UInt8($0 >> 8)] } }

    static func hmacMD5(key: [UInt8], _ data: [UInt8]) -> [UInt8] {
        Array(HMAC<Insecure.MD5>.authenticationCode(for: data, using: SymmetricKey(data: key)))
    }

    private static func append(_ value: UInt16, to bytes: inout [UInt8]) {
        bytes += [UInt8(truncatingIfNeeded: value), UInt8(truncatingIfNeeded: value >> 8)]
    }

    private static func append(_ value: UInt32, to bytes: inout [UInt8]) {
        bytes += (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * UInt32($0))) }
    }
}
