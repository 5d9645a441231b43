public import CulvertCore

/// How the opening of a stream for a listener's connection ended: what a listener needs to answer its own client
/// (a SOCKS reply, an HTTP proxy's status line) before any byte flows.
public enum StreamOpenResult: Hashable, Sendable {
    /// The peer connected the target (OPEN_OK): bytes flow.
    case opened
    /// The peer could not or would not open the target (OPEN_FAIL with its reason and message).
    case refused(OpenFailReason, String)
    /// The session could not take the stream (it is going away, ended, or at its stream limit); nothing was sent.
    case unavailable(String)
}
