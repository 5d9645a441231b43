import CulvertCore

/// What a server keeps of an established session so that a client may resume it: the session, and copies of its
/// key, capabilities and id, so that the connection checking a resumption (on any loop) reads nothing of the
/// session itself.
struct ResumableSession: Sendable {
    let session: SessionHandle
    let key: [UInt8]
    let capabilities: Capabilities
    /// The session id in hex, for logs.
    let sessionIDString: String
}
