import NIOConcurrencyHelpers

/// One forward proxy's credentials and what the proxy last asked for, shared by every connection a client makes
/// through it: each request gets the `Proxy-Authorization` the proxy's scheme wants — Basic, or Digest with the nonce
/// it gave and the next nonce count — and each 407 updates it. Of the schemes a proxy offers, the strongest this side
/// speaks is used: Digest SHA-256-sess or SHA-256, then NTLMv2, then Digest MD5-sess or MD5, then Basic. NTLM
/// authenticates a connection rather than a request: its handshake is the handlers' (``isConnectionBased``).
///
/// Nothing is sent before the proxy has named its scheme (``needsChallenge``; ``ServerPathDialer`` asks first), so a
/// password never goes out in Basic's clear text to a proxy that would take Digest. Never logged: ``description``
/// names the user and the scheme only. A lock, not a loop: connections on all of a client's loops share it.
public final class ProxyAuthenticator: Sendable, CustomStringConvertible {
    public let username: String
    private let password: String

    private enum Scheme: Sendable {
        /// The proxy asked for nothing: send nothing.
        case none
        case basic
        case digest(DigestAuthentication, clientNonce: String, count: UInt32)
        case ntlm
    }

    /// nil until the proxy's first answer.
    private let scheme = NIOLockedValueBox<Scheme?>(nil)

    public init(username: String, password: String) {
        self.username = username
        self.password = password
    }

    /// Whether the proxy has not yet said what it wants (ask it before sending a request that matters).
    public var needsChallenge: Bool { self.scheme.withLockedValue { $0 == nil } }

    /// The scheme in force, as a proxy names it (`Basic`, `Digest`), or nil before one.
    public var schemeName: String? {
        self.scheme.withLockedValue { scheme in
            switch scheme {
            case .basic?: "Basic"
            case .digest?: "Digest"
            case .ntlm?: "NTLM"
            case .none?, nil: nil
            }
        }
    }

    /// The proxy answered a request without asking for credentials.
    public func proxyAskedForNothing() {
        self.scheme.withLockedValue { if $0 == nil { $0 = Scheme.none } }
    }

    /// The `Proxy-Authorization` value for a request with `method` to `uri` (the request target as sent), or nil
    /// when nothing is to be sent.
    public func authorization(method: String, uri: String) -> String? {
        // Only the choice and the nonce count are taken under the lock; the hashing is done after, so that the
        // many requests of chunked and polling connections on other loops do not wait for each other's hashes.
        enum Answer {
            case basic
            case digest(DigestAuthentication, clientNonce: String, count: UInt32)
        }
        let answer = self.scheme.withLockedValue { scheme -> Answer? in
            switch scheme {
            case .basic?:
                return .basic
            case .digest(let digest, let clientNonce, let count)?:
                let next = count &+ 1
                scheme = .digest(digest, clientNonce: clientNonce, count: next)
                return .digest(digest, clientNonce: clientNonce, count: next)
            case .none?, .ntlm?, nil:
                return nil
            }
        }
        switch answer {
        case .basic?:
            return "Basic " + Base64.encode(Array("\(self.username):\(self.password)".utf8))
        case .digest(let digest, let clientNonce, let count)?:
            return digest.authorization(
                username: self.username, password: self.password, method: method, uri: uri, nonceCount: count, clientNonce: clientNonce
            )
        case nil:
            return nil
        }
    }

    /// Whether the scheme in force authenticates connections (NTLM): each new connection runs its handshake first.
    public var isConnectionBased: Bool {
        self.scheme.withLockedValue { if case .ntlm? = $0 { return true } else { return false } }
    }

    /// NTLM's first message, as a `Proxy-Authorization` value.
    public func ntlmNegotiation() -> String {
        "NTLM " + Base64.encode(NTLMAuthentication.negotiateMessage())
    }

    /// NTLM's last message answering the CHALLENGE in `challenges` (the `NTLM <token>` of a 407), as a
    /// `Proxy-Authorization` value; nil when there is none.
    public func ntlmAuthentication(answering challenges: [ProxyChallenge]) -> String? {
        guard let token = challenges.first(where: { $0.scheme == "ntlm" })?.token,
            let challenge = NTLMAuthentication.Challenge(fromBase64: token)
        else { return nil }
        return "NTLM " + Base64.encode(NTLMAuthentication.authenticateMessage(challenge: challenge, username: self.username, password: self.password))
    }

    /// The challenges of a 407 to a request that carried `sent` (nil: no credentials): puts the strongest one this
    /// side can answer in force. Returns whether sending the request again may succeed — a first challenge, a
    /// stale nonce, a scheme that changed — and false when these credentials were just refused (or nothing offered
    /// can be answered).
    @discardableResult
    public func challenged(_ challenges: [ProxyChallenge], sent: String?) -> Bool {
        let digest = challenges.compactMap(DigestAuthentication.init).max { $0.algorithm.strength < $1.algorithm.strength }
        let offersBasic = challenges.contains { $0.scheme == "basic" }
        let offersNTLM = challenges.contains { $0.scheme == "ntlm" }
        let sentScheme = sent?.split(separator: " ", maxSplits: 1).first?.lowercased()
        return self.scheme.withLockedValue { scheme in
            if offersNTLM, (digest?.algorithm.strength ?? 0) < DigestAuthentication.Algorithm.sha256.strength {
                scheme = .ntlm
                return sentScheme != "ntlm"
            }
            if let digest {
                let worthRetrying = sentScheme != "digest" || digest.stale
                scheme = .digest(digest, clientNonce: Self.makeClientNonce(), count: 0)
                return worthRetrying
            }
            guard offersBasic else { return false }
            scheme = .basic
            return sentScheme != "basic"
        }
    }

    public var description: String { "\(self.username) (\(self.schemeName ?? "scheme not known yet"))" }

    /// 16 random bytes as hex: the `cnonce` of every answer to one nonce.
    private static func makeClientNonce() -> String {
        (0..<16).map { _ in UInt8.random(in: 0...255) }.lowercaseHex
    }
}
