/// The session handshake, for either role, as a pure state machine.
///
/// ```
/// client                         server
///   HELLO (version, caps, nonce) →
///                                ← CHALLENGE (version, caps, nonce)
///   AUTH (client proof)          →
///                                ← WELCOME (server proof, session id)     or  ← GOAWAY (reason)
/// ```
/// Feed every handshake frame to ``receive(_:)`` and perform the returned ``Action``.
public struct HandshakeStateMachine: Sendable {
    /// The protocol version this implementation speaks.
    public static let protocolVersion: UInt8 = 1

    /// What the session learns from a completed handshake.
    public struct Outcome: Hashable, Sendable {
        public var sessionID: [UInt8]
        public var sessionKey: [UInt8]
        public var capabilities: Capabilities
        /// The largest DATA payload the peer accepts.
        public var peerMaximumDataPayload: UInt32
        /// Reliable frames the peer says it has received (non-zero only when resuming).
        public var peerReceived: UInt64
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
        case client(token: String?)
        case server(token: String?, authenticationRequired: Bool)
    }

    private enum State: Sendable {
        case clientIdle
        case clientAwaitingChallenge(Hello)
        case clientAwaitingWelcome(transcript: [UInt8], capabilities: Capabilities, peerMaximum: UInt32)
        case serverAwaitingHello
        case serverAwaitingAuth(transcript: [UInt8], capabilities: Capabilities, peerMaximum: UInt32)
        case established
        case failed
    }

    private var state: State
    private let keys: HandshakeKeys
    private let authenticationRequired: Bool
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
        case .client(let token):
            self.state = .clientIdle
            self.keys = HandshakeKeys(token: token)
            self.authenticationRequired = true
        case .server(let token, let required):
            self.state = .serverAwaitingHello
            self.keys = HandshakeKeys(token: token)
            self.authenticationRequired = required
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
        let hello = Hello(
            version: Self.protocolVersion,
            capabilities: self.capabilities,
            nonce: self.randomBytes(32),
            maximumDataPayload: self.maximumDataPayload
        )
        self.state = .clientAwaitingChallenge(hello)
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
        case (.clientAwaitingChallenge(let hello), .challenge(let challenge)):
            guard challenge.version == Self.protocolVersion else {
                return self.fail(.unsupportedVersion(challenge.version), goAway: nil)
            }
            let transcript = HandshakeKeys.transcript(hello: hello, challenge: challenge)
            self.state = .clientAwaitingWelcome(
                transcript: transcript,
                capabilities: hello.capabilities.intersection(challenge.capabilities),
                peerMaximum: challenge.maximumDataPayload
            )
            return .send(.auth(Auth(proof: self.keys.clientProof(transcript: transcript), received: 0)))

        case (.clientAwaitingWelcome(let transcript, let capabilities, let peerMaximum), .welcome(let welcome)):
            let expected = self.keys.serverProof(transcript: transcript, sessionID: welcome.sessionID)
            guard HandshakeKeys.proofsMatch(welcome.proof, expected) else {
                return self.fail(.serverProofInvalid, goAway: .authenticationFailed)
            }
            self.state = .established
            let outcome = Outcome(
                sessionID: welcome.sessionID,
                sessionKey: self.keys.sessionKey(transcript: transcript),
                capabilities: capabilities.intersection(welcome.capabilities),
                peerMaximumDataPayload: peerMaximum,
                peerReceived: welcome.received
            )
            return .established(outcome, send: nil)

        case (.serverAwaitingHello, .hello(let hello)):
            guard hello.version == Self.protocolVersion else {
                return self.fail(.unsupportedVersion(hello.version), goAway: .unsupportedVersion)
            }
            guard hello.nonce.count == 32 else {
                return self.fail(.protocolViolation("HELLO nonce is not 32 bytes"), goAway: .protocolError)
            }
            guard hello.resumeSessionID.isEmpty else {
                return self.fail(.resumeRefused, goAway: .resumeRefused)
            }
            let challenge = Challenge(
                version: Self.protocolVersion,
                capabilities: self.capabilities,
                nonce: self.randomBytes(32),
                maximumDataPayload: self.maximumDataPayload
            )
            self.state = .serverAwaitingAuth(
                transcript: HandshakeKeys.transcript(hello: hello, challenge: challenge),
                capabilities: hello.capabilities.intersection(self.capabilities),
                peerMaximum: hello.maximumDataPayload
            )
            return .send(.challenge(challenge))

        case (.serverAwaitingAuth(let transcript, let capabilities, let peerMaximum), .auth(let auth)):
            if self.authenticationRequired {
                let expected = self.keys.clientProof(transcript: transcript)
                guard HandshakeKeys.proofsMatch(auth.proof, expected) else {
                    return self.fail(.clientProofInvalid, goAway: .authenticationFailed)
                }
            }
            let sessionID = self.randomBytes(16)
            let welcome = Welcome(
                proof: self.keys.serverProof(transcript: transcript, sessionID: sessionID),
                sessionID: sessionID,
                capabilities: capabilities,
                received: 0
            )
            self.state = .established
            let outcome = Outcome(
                sessionID: sessionID,
                sessionKey: self.keys.sessionKey(transcript: transcript),
                capabilities: capabilities,
                peerMaximumDataPayload: peerMaximum,
                peerReceived: auth.received
            )
            return .established(outcome, send: .welcome(welcome))

        case (_, .goAway(let code, let message)):
            self.state = .failed
            return .fail(.refusedByPeer(code, message), send: nil)

        case (.established, _), (.failed, _):
            return self.fail(.protocolViolation("handshake frame after the handshake ended"), goAway: .protocolError)

        default:
            return self.fail(.protocolViolation("unexpected \(frame.type) frame during the handshake"), goAway: .protocolError)
        }
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
    case unsupportedVersion(UInt8)
    /// The client's proof did not verify: it does not hold the server's token.
    case clientProofInvalid
    /// The server's proof did not verify: it does not hold the client's token.
    case serverProofInvalid
    case resumeRefused
    case protocolViolation(String)
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
        case .resumeRefused:
            "session resumption refused"
        case .protocolViolation(let reason):
            "protocol violation: \(reason)"
        case .refusedByPeer(let code, let message):
            message.isEmpty ? "refused by peer: \(code)" : "refused by peer: \(message)"
        }
    }
}
