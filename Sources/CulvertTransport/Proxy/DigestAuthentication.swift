import Crypto

/// HTTP Digest access authentication (RFC 7616) as a proxy client: a `Digest` challenge read, and the
/// `Proxy-Authorization` answer for one request, with qop `auth` (or, for a proxy that offers no qop, RFC 2069's
/// form), for MD5, MD5-sess, SHA-256 and SHA-256-sess. The password never leaves: only hashes of it do.
///
/// Hand-written on swift-crypto's hashes: no package on the machine speaks Digest (AsyncHTTPClient, which does
/// not either, is not among them).
public struct DigestAuthentication: Hashable, Sendable {
    public enum Algorithm: String, Hashable, Sendable, CaseIterable {
        case md5 = "MD5"
        case md5Session = "MD5-sess"
        case sha256 = "SHA-256"
        case sha256Session = "SHA-256-sess"

        /// Higher is stronger: a proxy offering several Digest challenges gets the strongest answered.
        public var strength: Int {
            switch self {
            case .md5: 1
            case .md5Session: 2
            case .sha256: 3
            case .sha256Session: 4
            }
        }

        var isSession: Bool { self == .md5Session || self == .sha256Session }

        /// The lowercase hex digest of `text`'s UTF-8 bytes.
        func hash(_ text: String) -> String {
            let bytes = Array(text.utf8)
            switch self {
            case .md5, .md5Session: return Insecure.MD5.hash(data: bytes).lowercaseHex
            case .sha256, .sha256Session: return SHA256.hash(data: bytes).lowercaseHex
            }
        }
    }

    public let realm: String
    public let nonce: String
    public let opaque: String?
    public let algorithm: Algorithm
    /// Whether the challenge offered qop `auth` (else the answer has no qop, nc or cnonce).
    public let qualityOfProtection: Bool
    /// The proxy says the last nonce expired, not that the credentials were wrong: answer again with this one.
    public let stale: Bool

    /// The challenge's Digest parameters; nil when it is not a Digest challenge this side can answer (no realm or
    /// nonce, an unknown algorithm, or a qop list without `auth`, such as `auth-int` alone).
    public init?(_ challenge: ProxyChallenge) {
        guard challenge.scheme == "digest", let realm = challenge.parameters["realm"], let nonce = challenge.parameters["nonce"]
        else { return nil }
        let algorithmName = challenge.parameters["algorithm"] ?? "MD5"
        guard let algorithm = Algorithm.allCases.first(where: { $0.rawValue.lowercased() == algorithmName.lowercased() }) else {
            return nil
        }
        if let qop = challenge.parameters["qop"] {
            let offered = qop.split(separator: ",").map { String($0).trimmingCharacters(in: " \t").lowercased() }
            guard offered.contains("auth") else { return nil }
            self.qualityOfProtection = true
        } else {
            self.qualityOfProtection = false
        }
        self.realm = realm
        self.nonce = nonce
        self.opaque = challenge.parameters["opaque"]
        self.algorithm = algorithm
        self.stale = challenge.parameters["stale"]?.lowercased() == "true"
    }

    /// The `Proxy-Authorization` value for a request with `method` to `uri` (its request target exactly as sent:
    /// `host:port` for CONNECT, the absolute URI otherwise), the `nonceCount`-th with this nonce.
    public func authorization(
        username: String, password: String, method: String, uri: String, nonceCount: UInt32, clientNonce: String
    ) -> String {
        let response = self.response(
            username: username, password: password, method: method, uri: uri, nonceCount: nonceCount, clientNonce: clientNonce
        )
        var fields = [
            "username=\(Self.quoted(username))", "realm=\(Self.quoted(self.realm))", "nonce=\(Self.quoted(self.nonce))",
            "uri=\(Self.quoted(uri))", "algorithm=\(self.algorithm.rawValue)", "response=\(Self.quoted(response))",
        ]
        if self.qualityOfProtection {
            fields += ["qop=auth", "nc=\(Self.nonceCountText(nonceCount))", "cnonce=\(Self.quoted(clientNonce))"]
        }
        if let opaque = self.opaque { fields.append("opaque=\(Self.quoted(opaque))") }
        return "Digest " + fields.joined(separator: ", ")
    }

    /// The `response` field (RFC 7616 §3.4.1).
    public func response(
        username: String, password: String, method: String, uri: String, nonceCount: UInt32, clientNonce: String
    ) -> String {
        let hash = self.algorithm.hash
        var a1 = hash("\(username):\(self.realm):\(password)")
        if self.algorithm.isSession { a1 = hash("\(a1):\(self.nonce):\(clientNonce)") }
        let a2 = hash("\(method):\(uri)")
        guard self.qualityOfProtection else { return hash("\(a1):\(self.nonce):\(a2)") }
        return hash("\(a1):\(self.nonce):\(Self.nonceCountText(nonceCount)):\(clientNonce):auth:\(a2)")
    }

    /// `nc`: eight hex digits.
    static func nonceCountText(_ count: UInt32) -> String {
        let text = String(count, radix: 16)
        return String(repeating: "0", count: max(0, 8 - text.count)) + text
    }

    /// A quoted-string, with `"` and `\` escaped.
    static func quoted(_ text: String) -> String {
        "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: String) -> String {
        String(self.drop { set.contains($0) }.reversed().drop { set.contains($0) }.reversed())
    }

    fileprivate func replacingOccurrences(of target: String, with replacement: String) -> String {
        self.split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}
