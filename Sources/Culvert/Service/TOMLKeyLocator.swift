/// Finds the line of a key in a TOML text, for error messages: TOMLKit reports where a syntax error is, but not
/// where a well-formed value that culvert refuses came from.
///
/// It understands the forms a hand-written file uses: `key = …` under a `[table]` header, dotted keys, and quoted
/// names; a key it cannot place gets the line of its table's header, or none.
struct TOMLKeyLocator {
    private let lines: [Substring]

    init(_ text: String) {
        self.lines = text.split(separator: "\n", omittingEmptySubsequences: false)
    }

    /// The 1-based line where `path` (e.g. `["users", "alice", "token"]`) is set.
    func line(of path: [String]) -> Int? {
        guard !path.isEmpty else { return nil }
        // Longest table prefix first: `[users.alice]` then `token = …`, or `[users]` then `alice.token = …`.
        for split in stride(from: path.count - 1, through: 0, by: -1) {
            let table = Array(path[..<split])
            let rest = Array(path[split...])
            if let line = self.line(ofKey: rest, inTable: table) { return line }
        }
        // A table: its own header, or the first header inside it (`[groups.x]` for `groups`); else its parent's.
        return self.headerLine(of: path) ?? self.headerLine(of: Array(path.dropLast()))
    }

    private func line(ofKey key: [String], inTable table: [String]) -> Int? {
        var inTable = table.isEmpty
        for (index, raw) in self.lines.enumerated() {
            let line = raw.trimmingWhitespace
            if line.hasPrefix("[") {
                inTable = Self.headerKey(line) == table
                continue
            }
            guard inTable, let equals = line.firstIndex(of: "=") else { continue }
            if Self.keyParts(line[..<equals]) == key { return index + 1 }
        }
        return nil
    }

    private func headerLine(of table: [String]) -> Int? {
        guard !table.isEmpty else { return nil }
        let headers = self.lines.enumerated().compactMap { index, raw in Self.headerKey(raw.trimmingWhitespace).map { (index + 1, $0) } }
        return headers.first { $0.1 == table }?.0 ?? headers.first { $0.1.starts(with: table) }?.0
    }

    /// `[a.b]` or `[[a.b]]` → `["a", "b"]`.
    private static func headerKey(_ line: Substring) -> [String]? {
        guard line.hasPrefix("["), let close = line.lastIndex(of: "]") else { return nil }
        var inner = line[line.index(after: line.startIndex)..<close]
        if inner.hasPrefix("[") { inner = inner.dropFirst() }
        if inner.hasSuffix("]") { inner = inner.dropLast() }
        return Self.keyParts(inner)
    }

    /// `a . "b c" .d` → `["a", "b c", "d"]`.
    private static func keyParts(_ text: Substring) -> [String] {
        var parts: [String] = []
        var current = ""
        var quote: Character?
        for character in text {
            if let open = quote {
                if character == open { quote = nil } else { current.append(character) }
            } else if character == "\"" || character == "'" {
                quote = character
            } else if character == "." {
                parts.append(current)
                current = ""
            } else if !character.isWhitespace {
                current.append(character)
            }
        }
        parts.append(current)
        return parts
    }
}

extension Substring {
    fileprivate var trimmingWhitespace: Substring {
        var text = self
        while let first = text.first, first.isWhitespace { text = text.dropFirst() }
        while let last = text.last, last.isWhitespace { text = text.dropLast() }
        return text
    }
}
