/// Splits the authority of a URL, `host[:port]` or `[IPv6][:port]`, for server and proxy URLs alike.
enum Authority {
    struct Invalid: Error {
        /// Why, for the caller's one-line message.
        let reason: String
    }

    static func split(_ authority: String, defaultPort: Int) throws(Invalid) -> (host: String, port: Int) {
        let host: String
        let port: Int
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw Invalid(reason: "unclosed '['") }
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            if after.isEmpty {
                port = defaultPort
            } else if after.hasPrefix(":"), let number = Int(after.dropFirst()), (1...65535).contains(number) {
                port = number
            } else {
                throw Invalid(reason: "bad port after the IPv6 address")
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = String(authority[..<colon])
            guard let number = Int(authority[authority.index(after: colon)...]), (1...65535).contains(number) else {
                throw Invalid(reason: "the port must be a number from 1 to 65535")
            }
            port = number
        } else {
            host = authority
            port = defaultPort
        }
        guard !host.isEmpty else { throw Invalid(reason: "no host") }
        return (host, port)
    }
}
