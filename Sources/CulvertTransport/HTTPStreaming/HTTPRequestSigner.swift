import Crypto
import NIOCore

/// Signs and checks the requests of one chunked or polling connection once its session is authenticated, so that
/// knowing a connection id (from a URL, a header, a proxy's log) is not enough to read, write or end anything.
///
/// ```
/// Culvert-Auth: COUNTER "." BASE64( HMAC-SHA256( k, METHOD "\n" ENDPOINT "\n" ID "\n" OFFSET "\n" COUNTER ) )
/// k = HMAC-SHA256( session key, "culvert http requests v1" 0x00 ID )
/// ```
/// ENDPOINT is `down` or `up` (not the whole path, which a reverse proxy may rewrite); OFFSET is the request's
/// `a=` (down) or `o=` (up); COUNTER counts the client's requests on the connection and is never accepted twice.
/// The session key never crossed the wire, so a path observer who saw every request cannot make a new one.
public struct HTTPRequestSigner: Sendable {
    public static let headerName = CulvertRequestField.auth.headerName
    /// The header that names the connection (kept out of URLs, which access logs keep).
    public static let connectionHeaderName = CulvertRequestField.connection.headerName

    private let key: SymmetricKey
    let connectionID: String

    public init(sessionKey: [UInt8], connectionID: String) {
        let derivation = Array("culvert http requests v1".utf8) + [0] + Array(connectionID.utf8)
        let derived = HMAC<SHA256>.authenticationCode(for: derivation, using: SymmetricKey(data: sessionKey))
        self.key = SymmetricKey(data: Array(derived))
        self.connectionID = connectionID
    }

    /// The `Culvert-Auth` value for a request.
    public func signature(method: String, endpoint: String, offset: UInt64, counter: UInt64) -> String {
        "\(counter)." + Base64.encode(self.tag(method: method, endpoint: endpoint, offset: offset, counter: counter))
    }

    /// The counter of a correctly signed request, or nil.
    public func verify(_ value: String, method: String, endpoint: String, offset: UInt64) -> UInt64? {
        guard let dot = value.firstIndex(of: "."), let counter = UInt64(value[..<dot]) else { return nil }
        let expected = Base64.encode(self.tag(method: method, endpoint: endpoint, offset: offset, counter: counter))
        let given = Array(value[value.index(after: dot)...].utf8)
        let wanted = Array(expected.utf8)
        // Constant time over the tag.
        guard given.count == wanted.count else { return nil }
        var difference: UInt8 = 0
        for index in 0..<wanted.count { difference |= given[index] ^ wanted[index] }
        return difference == 0 ? counter : nil
    }

    private func tag(method: String, endpoint: String, offset: UInt64, counter: UInt64) -> [UInt8] {
        let message = "\(method)\n\(endpoint)\n\(self.connectionID)\n\(offset)\n\(counter)"
        return Array(HMAC<SHA256>.authenticationCode(for: Array(message.utf8), using: self.key))
    }
}

/// The request counters a server has accepted on one connection: each at most once, and none more than `width`
/// below the highest (requests go out in parallel and may arrive out of order, but a replay never gets in).
struct RequestCounterWindow: Sendable {
    static let width: UInt64 = 1024
    private var highest: UInt64 = 0
    private var seen: Set<UInt64> = []

    /// Takes `counter` if it is new and recent enough.
    mutating func accept(_ counter: UInt64) -> Bool {
        guard counter + Self.width > self.highest, !self.seen.contains(counter) else { return false }
        self.seen.insert(counter)
        if counter > self.highest {
            self.highest = counter
            if self.seen.count > 2 * Int(Self.width) { self.seen = self.seen.filter { $0 + Self.width > self.highest } }
        }
        return true
    }
}
