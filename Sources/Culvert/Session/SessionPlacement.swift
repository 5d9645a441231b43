import Crypto
import CulvertCore

/// The tag a client sends on the `open` of a chunked or polling connection that resumes a session, so that the
/// server makes that connection on the session's loop: 16 hex digits of SHA-256 over a label and the session id.
/// It names the session without carrying its id in a header (the id is for the handshake, inside the body); a tag
/// that names no session only means the connection stays on the loop that took it.
enum SessionPlacement {
    static func tag(sessionID: [UInt8]) -> String {
        var hash = SHA256()
        hash.update(data: Array("culvert v1 placement".utf8))
        hash.update(data: sessionID)
        return hash.finalize().prefix(8).lowercaseHex
    }
}
