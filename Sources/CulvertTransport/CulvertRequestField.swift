public import NIOHTTP1

/// Culvert's own request fields: each goes as its `Culvert-` header and again as a cookie in the request's one
/// `Cookie` header. Some company proxies pass on only the headers they know (squid's `request_header_access Other
/// deny all`) and keep cookies, which every web application needs; others strip cookies and keep headers. The server
/// reads the header, and the cookie where the header did not arrive.
public enum CulvertRequestField: CaseIterable, Sendable {
    /// The chunked or polling connection a request belongs to.
    case connection
    /// The request's signature once the session is authenticated (``HTTPRequestSigner``).
    case auth
    /// The request belongs to a session being resumed (a draining server lets it through).
    case resume
    /// The session's placement tag on the `open` of a connection that resumes it.
    case placement

    public var headerName: String {
        switch self {
        case .connection: "Culvert-Connection"
        case .auth: "Culvert-Auth"
        case .resume: "Culvert-Resume"
        case .placement: "Culvert-Placement"
        }
    }

    public var cookieName: String {
        switch self {
        case .connection: "culvert_connection"
        case .auth: "culvert_auth"
        case .resume: "culvert_resume"
        case .placement: "culvert_placement"
        }
    }

    /// The field whose header this is, if any.
    public init?(headerName: String) {
        guard let field = Self.allCases.first(where: { $0.headerName.lowercased() == headerName.lowercased() }) else { return nil }
        self = field
    }

    /// The field's value in a request: its header, else its cookie.
    public func value(in headers: HTTPHeaders) -> String? {
        if let value = headers.first(name: self.headerName) { return value }
        for line in headers["Cookie"] {
            for pair in line.split(separator: ";") {
                let trimmed = pair.drop { $0 == " " }
                guard let equals = trimmed.firstIndex(of: "="), trimmed[..<equals] == self.cookieName else { continue }
                return String(trimmed[trimmed.index(after: equals)...])
            }
        }
        return nil
    }

    /// Adds the field to a request: its header, and its cookie to the request's `Cookie` header (made if there is
    /// none; one `Cookie` header per request, as RFC 6265 §5.4 has it).
    public func add(_ value: String, to headers: inout HTTPHeaders) {
        headers.add(name: self.headerName, value: value)
        let cookie = "\(self.cookieName)=\(value)"
        if let existing = headers.first(name: "Cookie"), !existing.isEmpty {
            headers.replaceOrAdd(name: "Cookie", value: existing + "; " + cookie)
        } else {
            headers.replaceOrAdd(name: "Cookie", value: cookie)
        }
    }
}
