import Crypto

/// The session handshake, for either role, as a pure state machine.
///
/// ```
/// client                                   server
///   HELLO (version, caps, nonce, key share) →
///                                ← CHALLENGE (version, caps, nonce, key share)
///   AUTH (client proof)          →
///                                ← WELCOME (server proof, session id)     or  ← GOAWAY (reason)
/// ```
/// Resuming a session on a new transport connection is the same exchange: HELLO names the session, the proofs are
/// made with the session key instead of the token, and AUTH and WELCOME carry how many reliable frames each side
/// has received, so each can send the other what it missed.
///
/// Each side's key share is a fresh X25519 public key. With ``Capabilities/sealed`` on both sides, the outcome
/// carries the keys that seal every later frame of this connection (``SessionCipher``); a side that offers it and
/// meets a peer that does not fails the handshake (``HandshakeError/sealingMismatch(clientHasIt:)``).
/// Feed every handshake frame to ``receive(_:)`` and perform the returned ``Action``.
public struct HandshakeStateMachine: Sendable {
    /// The protocol version this implementation speaks.
    public static let protocolVersion: UInt8 = 2

    /// What the session learns from a completed handshake.
    public struct Outcome: Hashable, Sendable {
        public var sessionID: [UInt8]
        public var sessionKey: [UInt8]
        public var capabilities: Capabilities
        /// The largest DATA payload the peer accepts.
        public var peerMaximumDataPayload: UInt32
        /// Reliable frames the peer says it has received (non-zero only when resuming).
        public var peerReceived: UInt64
        /// The named user the client authenticated as; nil for the shared token (and when resuming: the session
        /// keeps the user it began with).
        public var user: String? = nil
        /// Server: the client said the session only probes the path (``Capabilities/probe``).
        public var isProbe = false
        /// The keys of this connection's sealed frames; nil when both sides have end-to-end protection off.
        public var sealingKeys: SealingKeys? = nil

        /// The session id in lower-case hex, as logs show it.
        public var sessionIDString: String {
            self.sessionID.lowercaseHex
        }
    }

    /// What the driver must do after an event.
    public enum Action: Hashable, Sendable {
        /// Send this frame; the handshake is still under way.
        case send(Frame)
        /// Send this frame (if any), and the session is established.
        case established(Outcome, send: Frame?)
        /// Send this frame (if any) and end the connection: the handshake failed.
        case fail(HandshakeError, send: Frame?)
    }

    public enum Role: Sendable {
        /// A client proving `token`; with `user`, as that named user of a server's users file.
        case client(token: String?, user: String? = nil)
        /// A server that checks the shared `token` (nil: clients that name no user are refused, unless
        /// authentication is off) and, with `users`, named users' tokens.
        case server(token: String?, authenticationRequired: Bool, users: UserLookup? = nil)
        /// A client resuming session `sessionID` on a new transport connection, having received `received`
        /// reliable frames; it proves it holds `sessionKey`.
        case resumingClient(sessionID: [UInt8], sessionKey: [UInt8], received: UInt64)
        /// The server side of a resumption of session `sessionID`, which has received `received` reliable frames.
        case resumingServer(sessionID: [UInt8], sessionKey: [UInt8], received: UInt64)
    }

    /// What a resumption carries over from the session.
    private struct Resumption: Sendable {
        var sessionID: [UInt8]
        var sessionKey: [UInt8]
        var keys: HandshakeKeys
        var received: UInt64
    }

    private enum State: Sendable {
        case clientIdle
        case clientAwaitingChallenge(Hello, privateKey: [UInt8])
        case clientAwaitingWelcome(transcript: [UInt8], capabilities: Capabilities, peerMaximum: UInt32, sharedSecret: [UInt8])
        case serverAwaitingHello
        case serverAwaitingAuth(
            transcript: [UInt8], capabilities: Capabilities, peerMaximum: UInt32, user: String, isProbe: Bool, sharedSecret: [UInt8]
        )
        case established
        case failed
    }

    private var state: State
    private let keys: HandshakeKeys
    /// Client: the named user and its keys.
    private let userKeys: (name: String, keys: UserTokenKeys)?
    /// Server: the named users it knows.
    private let users: UserLookup?
    /// Server: whether it has a shared token for clients that name no user.
    private let acceptsSharedToken: Bool
    private let resumption: Resumption?
    private let authenticationRequired: Bool
    /// A client that has no token: a refusal for authentication then means the server needs one.
    private let clientWithoutToken: Bool
    private let capabilities: Capabilities
    private let maximumDataPayload: UInt32
    private let randomBytes: @Sendable (Int) -> [UInt8]

    /// - Parameters:
    ///   - capabilities: what this side offers.
    ///   - maximumDataPayload: the largest DATA payload this side accepts.
    ///   - randomBytes: the source of nonces and session ids (injected so tests are repeatable).
    public init(
        role: Role,
        capabilities: Capabilities,
        maximumDataPayload: UInt32,
        randomBytes: @escaping @Sendable (Int) -> [UInt8] = HandshakeStateMachine.systemRandomBytes
    ) {
        switch role {
        case .client(let token, let user):
            self.state = .clientIdle
            self.keys = HandshakeKeys(token: token)
            self.clientWithoutToken = token?.isEmpty ?? true
            self.authenticationRequired = true
            self.resumption = nil
            if let user, !user.isEmpty {
                self.userKeys = (user, UserTokenKeys(token: token ?? ""))
            } else {
                self.userKeys = nil
            }
            self.users = nil
            self.acceptsSharedToken = true
        case .server(let token, let required, let users):
            self.clientWithoutToken = false
            self.state = .serverAwaitingHello
            self.keys = HandshakeKeys(token: token)
            self.authenticationRequired = required
            self.resumption = nil
            self.userKeys = nil
            self.users = users
            self.acceptsSharedToken = token != nil || !required
        case .resumingClient(let sessionID, let sessionKey, let received),
            .resumingServer(let sessionID, let sessionKey, let received):
            if case .resumingClient = role { self.state = .clientIdle } else { self.state = .serverAwaitingHello }
            self.clientWithoutToken = false
            self.keys = HandshakeKeys(sessionKey: sessionKey)
            self.authenticationRequired = true
            self.userKeys = nil
            self.users = nil
            self.acceptsSharedToken = false
            self.resumption = Resumption(
                sessionID: sessionID, sessionKey: sessionKey, keys: HandshakeKeys(sessionKey: sessionKey), received: received
            )
        }
        self.capabilities = capabilities
        self.maximumDataPayload = maximumDataPayload
        self.randomBytes = randomBytes
    }

    /// The client's first step: the HELLO to send.
    public mutating func start() -> Frame {
        guard case .clientIdle = self.state else {
            preconditionFailure("start() is for a client that has not started")
        }
        let privateKey = self.newPrivateKey()
        let hello = Hello(
            version: Self.protocolVersion,
            capabilities: self.capabilities,
            nonce: self.randomBytes(32),
            keyShare: Self.keyShare(of: privateKey),
            maximumDataPayload: self.maximumDataPayload,
            resumeSessionID: self.resumption?.sessionID ?? [],
            user: self.userKeys?.name ?? ""
        )
        self.state = .clientAwaitingChallenge(hello, privateKey: privateKey)
        return .hello(hello)
    }

    /// Whether the handshake has finished successfully.
    public var isEstablished: Bool {
        if case .established = self.state { return true }
        return false
    }

    /// Handles one frame received before the session is established.
    public mutating func receive(_ frame: Frame) -> Action {
        switch (self.state, frame) {
        case (.clientAwaitingChallenge(let hello, let privateKey), .challenge(let challenge)):
            guard challenge.version == Self.protocolVersion else {
                return self.fail(.unsupportedVersion(challenge.version), goAway: nil)
            }
            if self.capabilities.contains(.sealed) != challenge.capabilities.contains(.sealed) {
                return self.fail(.sealingMismatch(clientHasIt: self.capabilities.contains(.sealed)), goAway: .protectionMismatch)
            }
            guard let sharedSecret = Self.sharedSecret(privateKey, challenge.keyShare) else {
                return self.fail(.protocolViolation("CHALLENGE key share is not a usable X25519 public key"), goAway: .protocolError)
            }
            let transcript = HandshakeKeys.transcript(hello: hello, challenge: challenge)
            self.state = .clientAwaitingWelcome(
                transcript: transcript,
                capabilities: hello.capabilities.intersection(challenge.capabilities),
                peerMaximum: challenge.maximumDataPayload,
                sharedSecret: sharedSecret
            )
            if let resumption = self.resumption {
                let proof = resumption.keys.clientResumeProof(transcript: transcript)
                return .send(.auth(Auth(proof: proof, received: resumption.received)))
            }
            if let (_, userKeys) = self.userKeys {
                return .send(.auth(Auth(proof: userKeys.clientProof(transcript: transcript), received: 0)))
            }
            return .send(.auth(Auth(proof: self.keys.clientProof(transcript: transcript), received: 0)))

        case (.clientAwaitingWelcome(let transcript, let capabilities, let peerMaximum, let sharedSecret), .welcome(let welcome))
        where self.resumption != nil:
            let resumption = self.resumption!
            let expected = resumption.keys.serverResumeProof(transcript: transcript, sessionID: welcome.sessionID)
            guard welcome.sessionID == resumption.sessionID, HandshakeKeys.proofsMatch(welcome.proof, expected) else {
                return self.fail(.serverProofInvalid, goAway: .authenticationFailed)
            }
            self.state = .established
            let agreed = capabilities.intersection(welcome.capabilities)
            let outcome = Outcome(
                sessionID: resumption.sessionID,
                sessionKey: resumption.sessionKey,
                capabilities: agreed,
                peerMaximumDataPayload: peerMaximum,
                peerReceived: welcome.received,
                sealingKeys: Self.sealingKeys(agreed, sharedSecret, resumption.sessionKey, transcript)
            )
            return .established(outcome, send: nil)

        case (.clientAwaitingWelcome(let transcript, let capabilities, let peerMaximum, let sharedSecret), .welcome(let welcome)):
            let expected: [UInt8]
            let sessionKey: [UInt8]
            if let (_, userKeys) = self.userKeys {
                expected = HandshakeKeys.userServerProof(
                    serverKey: userKeys.verifier.serverKey, transcript: transcript, sessionID: welcome.sessionID
                )
                sessionKey = HandshakeKeys.userSessionKey(clientKey: userKeys.clientKey, transcript: transcript)
            } else {
                expected = self.keys.serverProof(transcript: transcript, sessionID: welcome.sessionID)
                sessionKey = self.keys.sessionKey(transcript: transcript)
            }
            guard HandshakeKeys.proofsMatch(welcome.proof, expected) else {
                return self.fail(.serverProofInvalid, goAway: .authenticationFailed)
            }
            self.state = .established
            let agreed = capabilities.intersection(welcome.capabilities)
            let outcome = Outcome(
                sessionID: welcome.sessionID,
                sessionKey: sessionKey,
                capabilities: agreed,
                peerMaximumDataPayload: peerMaximum,
                peerReceived: welcome.received,
                user: self.userKeys?.name,
                sealingKeys: Self.sealingKeys(agreed, sharedSecret, sessionKey, transcript)
            )
            return .established(outcome, send: nil)

        case (.serverAwaitingHello, .hello(let hello)):
            guard hello.version == Self.protocolVersion else {
                return self.fail(.unsupportedVersion(hello.version), goAway: .unsupportedVersion)
            }
            guard hello.nonce.count == 32 else {
                return self.fail(.protocolViolation("HELLO nonce is not 32 bytes"), goAway: .protocolError)
            }
            guard hello.resumeSessionID == (self.resumption?.sessionID ?? []) else {
                return self.fail(.resumeRefused, goAway: .resumeRefused)
            }
            if self.capabilities.contains(.sealed) != hello.capabilities.contains(.sealed) {
                return self.fail(.sealingMismatch(clientHasIt: hello.capabilities.contains(.sealed)), goAway: .protectionMismatch)
            }
            let privateKey = self.newPrivateKey()
            guard let sharedSecret = Self.sharedSecret(privateKey, hello.keyShare) else {
                return self.fail(.protocolViolation("HELLO key share is not a usable X25519 public key"), goAway: .protocolError)
            }
            let challenge = Challenge(
                version: Self.protocolVersion,
                capabilities: self.capabilities,
                nonce: self.randomBytes(32),
                keyShare: Self.keyShare(of: privateKey),
                maximumDataPayload: self.maximumDataPayload
            )
            self.state = .serverAwaitingAuth(
                transcript: HandshakeKeys.transcript(hello: hello, challenge: challenge),
                capabilities: hello.capabilities.intersection(self.capabilities),
                peerMaximum: hello.maximumDataPayload,
                user: hello.user,
                isProbe: hello.capabilities.contains(.probe),
                sharedSecret: sharedSecret
            )
            return .send(.challenge(challenge))

        case (.serverAwaitingAuth(let transcript, let capabilities, let peerMaximum, _, _, let sharedSecret), .auth(let auth))
        where self.resumption != nil:
            let resumption = self.resumption!
            guard HandshakeKeys.proofsMatch(auth.proof, resumption.keys.clientResumeProof(transcript: transcript)) else {
                return self.fail(.resumeProofInvalid, goAway: .resumeRefused)
            }
            let welcome = Welcome(
                proof: resumption.keys.serverResumeProof(transcript: transcript, sessionID: resumption.sessionID),
                sessionID: resumption.sessionID,
                capabilities: capabilities,
                received: resumption.received
            )
            self.state = .established
            let outcome = Outcome(
                sessionID: resumption.sessionID,
                sessionKey: resumption.sessionKey,
                capabilities: capabilities,
                peerMaximumDataPayload: peerMaximum,
                peerReceived: auth.received,
                sealingKeys: Self.sealingKeys(capabilities, sharedSecret, resumption.sessionKey, transcript)
            )
            return .established(outcome, send: .welcome(welcome))

        case (.serverAwaitingAuth(let transcript, let capabilities, let peerMaximum, let user, let isProbe, let sharedSecret), .auth(let auth))
        where !user.isEmpty:
            return self.authenticateUser(
                user, auth: auth, transcript: transcript, capabilities: capabilities, peerMaximum: peerMaximum, isProbe: isProbe,
                sharedSecret: sharedSecret
            )

        case (.serverAwaitingAuth(let transcript, let capabilities, let peerMaximum, _, let isProbe, let sharedSecret), .auth(let auth)):
            // A server with named users only: a client that names none cannot be checked against any token.
            guard self.acceptsSharedToken else {
                return self.fail(.userProofInvalid, goAway: .authenticationFailed)
            }
            if self.authenticationRequired {
                let expected = self.keys.clientProof(transcript: transcript)
                guard HandshakeKeys.proofsMatch(auth.proof, expected) else {
                    return self.fail(.clientProofInvalid, goAway: .authenticationFailed)
                }
            }
            let keys = self.keys
            return self.welcomeNewSession(
                serverProof: { keys.serverProof(transcript: transcript, sessionID: $0) },
                sessionKey: keys.sessionKey(transcript: transcript),
                capabilities: capabilities, peerMaximum: peerMaximum, auth: auth, user: nil, isProbe: isProbe,
                transcript: transcript, sharedSecret: sharedSecret
            )

        case (_, .goAway(.authenticationFailed, _)) where self.clientWithoutToken:
            self.state = .failed
            return .fail(.noTokenGiven, send: nil)

        case (_, .goAway(let code, let message)):
            self.state = .failed
            return .fail(.refusedByPeer(code, message), send: nil)

        case (.established, _), (.failed, _):
            return self.fail(.protocolViolation("handshake frame after the handshake ended"), goAway: .protocolError)

        default:
            return self.fail(.protocolViolation("unexpected \(frame.type) frame during the handshake"), goAway: .protocolError)
        }
    }

    /// Checks a named user's proof. An unknown user is checked against a verifier made up for the occasion, so it
    /// takes the same work and gets the same refusal as a wrong token: from outside the two look alike.
    private mutating func authenticateUser(
        _ user: String, auth: Auth, transcript: [UInt8], capabilities: Capabilities, peerMaximum: UInt32, isProbe: Bool,
        sharedSecret: [UInt8]
    ) -> Action {
        let known = self.users?.verifier(user)
        let verifier = known ?? TokenVerifier(storedKey: self.randomBytes(32), serverKey: self.randomBytes(32))
        let clientKey = verifier.clientKey(fromProof: auth.proof, transcript: transcript)
        guard let clientKey, known != nil, let users = self.users else {
            return self.fail(.userProofInvalid, goAway: .authenticationFailed)
        }
        // A probe carries nothing and ends at once: it does not take one of the user's sessions.
        if !isProbe, let refusal = users.admit(user) {
            return self.fail(.userRefused(refusal), goAway: .overloaded)
        }
        return self.welcomeNewSession(
            serverProof: {
                HandshakeKeys.userServerProof(serverKey: verifier.serverKey, transcript: transcript, sessionID: $0)
            },
            sessionKey: HandshakeKeys.userSessionKey(clientKey: clientKey, transcript: transcript),
            capabilities: capabilities, peerMaximum: peerMaximum, auth: auth, user: user, isProbe: isProbe,
            transcript: transcript, sharedSecret: sharedSecret
        )
    }

    /// Establishes a new session on the server once the client's proof has been checked: a fresh session id, the
    /// WELCOME carrying the server's proof over it, and the outcome with the session key. Shared-token and named-user
    /// logins differ only in how the proof and the key are made.
    private mutating func welcomeNewSession(
        serverProof: (_ sessionID: [UInt8]) -> [UInt8],
        sessionKey: [UInt8],
        capabilities: Capabilities,
        peerMaximum: UInt32,
        auth: Auth,
        user: String?,
        isProbe: Bool,
        transcript: [UInt8],
        sharedSecret: [UInt8]
    ) -> Action {
        let sessionID = self.randomBytes(16)
        let welcome = Welcome(proof: serverProof(sessionID), sessionID: sessionID, capabilities: capabilities, received: 0)
        self.state = .established
        let outcome = Outcome(
            sessionID: sessionID,
            sessionKey: sessionKey,
            capabilities: capabilities,
            peerMaximumDataPayload: peerMaximum,
            peerReceived: auth.received,
            user: user,
            isProbe: isProbe,
            sealingKeys: Self.sealingKeys(capabilities, sharedSecret, sessionKey, transcript)
        )
        return .established(outcome, send: .welcome(welcome))
    }

    /// A fresh X25519 private key, from the injected source of randomness (so that test vectors can fix it).
    private func newPrivateKey() -> [UInt8] {
        self.randomBytes(32)
    }

    /// The public key of `privateKey`, as the key share on the wire.
    private static func keyShare(of privateKey: [UInt8]) -> [UInt8] {
        // 32 bytes are always an X25519 private key.
        let key = try! Curve25519.KeyAgreement.PrivateKey(rawRepresentation: privateKey)
        return Array(key.publicKey.rawRepresentation)
    }

    /// The X25519 secret of our private key and the peer's key share; nil for a share that is not a public key or
    /// gives the all-zero secret (a point of small order, which would make the secret known to anyone).
    private static func sharedSecret(_ privateKey: [UInt8], _ peerShare: [UInt8]) -> [UInt8]? {
        guard let key = try? Curve25519.KeyAgreement.PrivateKey(rawRepresentation: privateKey),
            let peer = try? Curve25519.KeyAgreement.PublicKey(rawRepresentation: peerShare),
            let secret = try? key.sharedSecretFromKeyAgreement(with: peer)
        else { return nil }
        let bytes = secret.withUnsafeBytes { Array($0) }
        return bytes.allSatisfy({ $0 == 0 }) ? nil : bytes
    }

    /// The sealing keys when both sides agreed on ``Capabilities/sealed``.
    private static func sealingKeys(
        _ agreed: Capabilities, _ sharedSecret: [UInt8], _ sessionKey: [UInt8], _ transcript: [UInt8]
    ) -> SealingKeys? {
        guard agreed.contains(.sealed) else { return nil }
        return HandshakeKeys.sealingKeys(sharedSecret: sharedSecret, sessionKey: sessionKey, transcript: transcript)
    }

    private mutating func fail(_ error: HandshakeError, goAway code: GoAwayCode?) -> Action {
        self.state = .failed
        return .fail(error, send: code.map { .goAway(code: $0, message: error.description) })
    }

    /// Random bytes from the system's cryptographically secure generator.
    public static let systemRandomBytes: @Sendable (Int) -> [UInt8] = { count in
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }
}

/// Why a handshake did not complete.
public enum HandshakeError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Whether the server turned the handshake away unheard because earlier attempts from this address failed.
    public var isThrottled: Bool {
        if case .refusedByPeer(let code, _) = self { return code == .throttled }
        return false
    }

    case unsupportedVersion(UInt8)
    /// The client's proof did not verify: it does not hold the server's token.
    case clientProofInvalid
    /// The server's proof did not verify: it does not hold the client's token.
    case serverProofInvalid
    /// The client has no token and the server refused it for that (it needs one).
    case noTokenGiven
    /// A named user's proof did not verify: the server does not know the user, or the token is not theirs (the
    /// two are told apart nowhere, so the name of a user cannot be guessed from the answer).
    case userProofInvalid
    /// The user proved its token, and the server refused the session for this reason (its session limit).
    case userRefused(String)
    case resumeRefused
    /// A resumption named a session this server has, with a proof made without its key: someone who saw the
    /// session's id, not its client.
    case resumeProofInvalid
    case protocolViolation(String)
    /// One side has end-to-end protection (``Capabilities/sealed``) on and the other off.
    case sealingMismatch(clientHasIt: Bool)
    /// The peer ended the handshake with GOAWAY.
    case refusedByPeer(GoAwayCode, String)

    public var description: String {
        switch self {
        case .unsupportedVersion(let version):
            "peer speaks protocol version \(version); this culvert speaks \(HandshakeStateMachine.protocolVersion)"
        case .clientProofInvalid:
            "wrong token: the client's proof did not verify"
        case .serverProofInvalid:
            "the server could not prove it knows the token (wrong token, or a server started with --no-auth)"
        case .userProofInvalid:
            "unknown user or wrong token: the client's proof did not verify"
        case .userRefused(let reason):
            reason
        case .noTokenGiven:
            "no token given, and the server needs one: pass --token or --token-file, or set CULVERT_TOKEN (the server's token)"
        case .resumeRefused:
            "session resumption refused"
        case .resumeProofInvalid:
            "session resumption refused: the proof does not verify with the session's key"
        case .protocolViolation(let reason):
            "protocol violation: \(reason)"
        case .sealingMismatch(let clientHasIt):
            "end-to-end session encryption is \(clientHasIt ? "on" : "off") at the client and \(clientHasIt ? "off" : "on") at the "
                + "server: start both with --no-session-encryption (only where TLS is end to end and pinned), or neither"
        case .refusedByPeer(let code, let message):
            message.isEmpty ? "refused by peer: \(code)" : "refused by peer: \(message)"
        }
    }
}
