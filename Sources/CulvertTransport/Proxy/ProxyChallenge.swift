/// One challenge of a proxy's `Proxy-Authenticate` (RFC 9110 §11.6.1): a scheme with its parameters, such as
/// `Digest realm="proxy", nonce="…", qop="auth", algorithm=SHA-256`, or with a token68 (NTLM's and Negotiate's
/// base64 blobs). One header may hold several challenges and a response several headers; ``parse(_:)`` reads all.
///
/// Hand-written: NIOHTTP1 has no parser for authentication headers, and none of the machine's packages does.
public struct ProxyChallenge: Hashable, Sendable {
    /// The scheme, lowercased (`basic`, `digest`, `ntlm`, …).
    public var scheme: String
    /// The auth-params, names lowercased, quoted strings unquoted.
    public var parameters: [String: String]
    /// The token68, when the challenge carries one instead of parameters.
    public var token: String?

    public init(scheme: String, parameters: [String: String] = [:], token: String? = nil) {
        self.scheme = scheme.lowercased()
        self.parameters = parameters
        self.token = token
    }

    /// Every challenge in `headerValues` (each a `Proxy-Authenticate` field value), in order; unparseable pieces
    /// are skipped.
    public static func parse(_ headerValues: [String]) -> [ProxyChallenge] {
        var challenges: [ProxyChallenge] = []
        for value in headerValues {
            for item in Self.splitOnTopLevelCommas(value) {
                let text = item.trimmingSpaces()
                guard !text.isEmpty else { continue }
                if let (name, parameterValue) = Self.parameter(text), !challenges.isEmpty {
                    // `name=value` continues the challenge before it.
                    challenges[challenges.count - 1].parameters[name] = parameterValue
                    continue
                }
                // `scheme [token68 | first-param]`
                let parts = text.split(separator: " ", maxSplits: 1)
                guard let scheme = parts.first, Self.isToken(scheme) else { continue }
                var challenge = ProxyChallenge(scheme: String(scheme))
                if parts.count == 2 {
                    let rest = parts[1].trimmingSpaces()
                    if let (name, parameterValue) = Self.parameter(rest) {
                        challenge.parameters[name] = parameterValue
                    } else if !rest.isEmpty {
                        challenge.token = rest
                    }
                }
                challenges.append(challenge)
            }
        }
        return challenges
    }

    /// `name = value` (token or quoted string), or nil when `text` is not one (a token68 ends in `=` only).
    private static func parameter(_ text: String) -> (String, String)? {
        guard let equals = text.firstIndex(of: "=") else { return nil }
        let name = text[..<equals].trimmingSpaces()
        let rawValue = text[text.index(after: equals)...].trimmingSpaces()
        // (`abc==` and `abc=` are token68s: base64 padding, not an empty parameter.)
        guard Self.isToken(Substring(name)), !rawValue.isEmpty, !rawValue.allSatisfy({ $0 == "=" }) else { return nil }
        if rawValue.first == "\"" { return (name.lowercased(), Self.unquoted(rawValue)) }
        return (name.lowercased(), rawValue)
    }

    /// A quoted-string's content, with its backslash escapes undone.
    private static func unquoted(_ text: String) -> String {
        var result = ""
        var escaped = false
        for character in text.dropFirst() {
            if escaped {
                result.append(character)
                escaped = false
            } else if character == "\\" {
                escaped = true
            } else if character == "\"" {
                break
            } else {
                result.append(character)
            }
        }
        return result
    }

    /// Splits at commas outside quoted strings.
    private static func splitOnTopLevelCommas(_ text: String) -> [String] {
        var items: [String] = []
        var current = ""
        var quoted = false
        var escaped = false
        for character in text {
            if escaped {
                escaped = false
            } else if quoted && character == "\\" {
                escaped = true
            } else if character == "\"" {
                quoted.toggle()
            } else if character == "," && !quoted {
                items.append(current)
                current = ""
                continue
            }
            current.append(character)
        }
        items.append(current)
        return items
    }

    private static func isToken(_ text: Substring) -> Bool {
        !text.isEmpty && text.allSatisfy { $0.isLetter || $0.isNumber || "!#$%&'*+-.^_`|~".contains($0) }
    }
}

extension StringProtocol {
    fileprivate func trimmingSpaces() -> String {
        String(self.drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}
