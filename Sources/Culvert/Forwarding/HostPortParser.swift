/// Splits `host:port` texts where the host may be an IPv6 literal in brackets.
enum HostPortParser {
    /// Splits a colon-separated list whose fields may be bracketed IPv6 literals (brackets removed).
    static func fields(_ text: String) -> [String]? {
        var fields: [String] = []
        var current = ""
        var inBrackets = false
        for character in text {
            switch character {
            case "[" where !inBrackets && current.isEmpty:
                inBrackets = true
            case "]" where inBrackets:
                inBrackets = false
            case ":" where !inBrackets:
                fields.append(current)
                current = ""
            default:
                current.append(character)
            }
        }
        guard !inBrackets else { return nil }
        fields.append(current)
        return fields
    }

    /// `host:port` into its two parts.
    static func split(_ text: String) -> (String, String)? {
        guard let fields = Self.fields(text), fields.count == 2 else { return nil }
        return (fields[0], fields[1])
    }
}
