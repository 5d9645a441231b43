import NIOConcurrencyHelpers
public import NIOHTTP1

/// The cookies of one tunnel session: what the path set on its responses (a load balancer's stickiness cookie,
/// haproxy's `cookie SRV insert`), sent back on every later request of the session, on every transport connection
/// it resumes on; and a random affinity id the session sends from its very first request
/// (`culvert_affinity`), so that a balancer can hash on it (nginx's `hash $cookie_culvert_affinity`).
///
/// Culvert talks to one server per session, so the jar holds the cookies of that one origin: domain and path are
/// not matched, `Max-Age=0` or a past `Expires` deletes. A lock, not a loop: a session's connections may live on
/// different loops before one adopts another.
public final class SessionCookieJar: Sendable {
    /// The cookie that carries ``affinity``.
    public static let affinityCookieName = "culvert_affinity"

    /// 32 random hex digits, the same for every request of the session.
    public let affinity: String
    private let cookies = NIOLockedValueBox<[(name: String, value: String)]>([])

    public init(affinity: String = SessionCookieJar.randomAffinity()) {
        self.affinity = affinity
    }

    public static func randomAffinity() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }.lowercaseHex
    }

    /// Keeps the cookies a response sets (RFC 6265 §5.2, simplified as above).
    public func store(from headers: HTTPHeaders) {
        let setCookies = headers["Set-Cookie"]
        guard !setCookies.isEmpty else { return }
        self.cookies.withLockedValue { cookies in
            for line in setCookies {
                let parts = line.split(separator: ";", omittingEmptySubsequences: false).map { $0.trimmingSpaces }
                guard let pair = parts.first, let equals = pair.firstIndex(of: "="), equals != pair.startIndex else { continue }
                let name = String(pair[..<equals])
                let value = String(pair[pair.index(after: equals)...])
                guard name != Self.affinityCookieName else { continue }
                let deletes = parts.dropFirst().contains { attribute in
                    let lowered = attribute.lowercased()
                    return lowered.hasPrefix("max-age=") && (Int(lowered.dropFirst(8)) ?? 1) <= 0
                }
                cookies.removeAll { $0.name == name }
                if !deletes { cookies.append((name, value)) }
            }
        }
    }

    /// The `Cookie` header for the session's next request.
    public var cookieHeader: String {
        let stored = self.cookies.withLockedValue { $0 }
        return ([(Self.affinityCookieName, self.affinity)] + stored).map { "\($0.0)=\($0.1)" }.joined(separator: "; ")
    }

    /// The cookies the path has set (not the affinity id), for tests and logs.
    public var storedNames: [String] { self.cookies.withLockedValue { $0.map(\.name) } }
}

extension Substring {
    fileprivate var trimmingSpaces: Substring {
        var text = self
        while text.first == " " || text.first == "\t" { text = text.dropFirst() }
        while text.last == " " || text.last == "\t" { text = text.dropLast() }
        return text
    }
}
