import CulvertTransport
import NIOHTTP1
import Testing

/// Culvert's request fields go as a header and as a cookie in the request's one `Cookie` header; the server reads
/// the header, else the cookie.
@Suite struct CulvertRequestFieldTests {
    @Test func aFieldGoesAsAHeaderAndAsACookieBesideTheSessionsCookies() {
        var headers = HTTPHeaders([("Cookie", "culvert_affinity=abcd")])
        CulvertRequestField.connection.add("00ff", to: &headers)
        CulvertRequestField.auth.add("7.q+/w==", to: &headers)
        #expect(headers["Culvert-Connection"] == ["00ff"])
        #expect(headers["Culvert-Auth"] == ["7.q+/w=="])
        #expect(headers["Cookie"] == ["culvert_affinity=abcd; culvert_connection=00ff; culvert_auth=7.q+/w=="])
    }

    @Test func theServerReadsTheHeaderElseTheCookie() {
        var both = HTTPHeaders()
        CulvertRequestField.auth.add("1.x", to: &both)
        both.replaceOrAdd(name: "Culvert-Auth", value: "2.y")
        #expect(CulvertRequestField.auth.value(in: both) == "2.y")

        let cookieOnly = HTTPHeaders([("Cookie", "a=b; culvert_auth=3.z=; culvert_connection=0a")])
        #expect(CulvertRequestField.auth.value(in: cookieOnly) == "3.z=")
        #expect(CulvertRequestField.connection.value(in: cookieOnly) == "0a")
        #expect(CulvertRequestField.placement.value(in: cookieOnly) == nil)
        #expect(CulvertRequestField.resume.value(in: HTTPHeaders([("Cookie", "xculvert_resume=1")])) == nil)
    }

    @Test func extraHeadersNamingAFieldGetTheirCookieToo() {
        #expect(CulvertRequestField(headerName: "culvert-resume") == .resume)
        #expect(CulvertRequestField(headerName: "X-Other") == nil)
    }
}
