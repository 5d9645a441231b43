/// How a server with named users (`--users`) checks them: the verifier of a user's token, and whether the user may
/// open one more session.
///
/// Both are asked at the moment of the handshake, so a reloaded users file applies to the next handshake at once.
public struct UserLookup: Sendable {
    /// The verifier of `user`'s token; nil for a user the server does not know.
    public var verifier: @Sendable (_ user: String) -> TokenVerifier?
    /// Asked once `user` has proved its token: nil admits the session (and counts it), a message refuses it.
    public var admit: @Sendable (_ user: String) -> String?

    public init(
        verifier: @escaping @Sendable (_ user: String) -> TokenVerifier?,
        admit: @escaping @Sendable (_ user: String) -> String? = { _ in nil }
    ) {
        self.verifier = verifier
        self.admit = admit
    }
}
