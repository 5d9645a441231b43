import CulvertTransport
import NIOHTTP1
import Testing

/// The cookies of one session: what responses set goes back on every request, with the session's affinity id first.
@Suite struct SessionCookieJarTests {
    @Test func cookiesThatResponsesSetGoBackAfterTheAffinityId() {
        let jar = SessionCookieJar(affinity: "0123456789abcdef0123456789abcdef")
        #expect(jar.cookieHeader == "culvert_affinity=0123456789abcdef0123456789abcdef")
        jar.store(from: ["Set-Cookie": "SRV=s1; path=/", "Content-Type": "text/plain"])
        jar.store(from: HTTPHeaders([("Set-Cookie", "route=a; HttpOnly"), ("Set-Cookie", "SRV=s2")]))
        #expect(jar.cookieHeader == "culvert_affinity=0123456789abcdef0123456789abcdef; route=a; SRV=s2")
    }

    @Test func maxAgeZeroDeletesAndTheAffinityIdCannotBeOverwritten() {
        let jar = SessionCookieJar(affinity: "aa")
        jar.store(from: ["Set-Cookie": "SRV=s1"])
        jar.store(from: ["Set-Cookie": "SRV=; Max-Age=0"])
        jar.store(from: ["Set-Cookie": "culvert_affinity=forged"])
        jar.store(from: ["Set-Cookie": "=nameless"])
        #expect(jar.storedNames.isEmpty)
        #expect(jar.cookieHeader == "culvert_affinity=aa")
    }

    @Test func eachJarHasItsOwnRandomAffinity() {
        let first = SessionCookieJar()
        let second = SessionCookieJar()
        #expect(first.affinity.count == 32 && first.affinity.allSatisfy(\.isHexDigit))
        #expect(first.affinity != second.affinity)
    }
}
