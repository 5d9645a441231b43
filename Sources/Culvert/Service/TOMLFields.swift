import TOMLKit

/// One TOML table of a configuration file, read key by key into culvert's own types: every wrong key, wrong type
/// or unknown key becomes a ``ConfigurationFileError`` naming the file, the line and the dotted key.
///
/// TOMLKit's values are views into a C++ document; nothing read through here keeps one.
struct TOMLFields {
    private let table: TOMLTable
    /// The dotted path of this table, e.g. `["users", "alice"]`.
    let path: [String]
    private let file: String
    private let locator: TOMLKeyLocator

    /// Parses `text`, the contents of `file`.
    static func parse(_ text: String, file: String) throws(ConfigurationFileError) -> TOMLFields {
        do {
            let table = try TOMLTable(string: text)
            return TOMLFields(table: table, path: [], file: file, locator: TOMLKeyLocator(text))
        } catch let error as TOMLParseError {
            throw ConfigurationFileError(path: file, line: error.source.begin.line, key: nil, message: "not valid TOML: \(error.description)")
        } catch {
            throw ConfigurationFileError(path: file, line: nil, key: nil, message: "not valid TOML: \(error)")
        }
    }

    private init(table: TOMLTable, path: [String], file: String, locator: TOMLKeyLocator) {
        self.table = table
        self.path = path
        self.file = file
        self.locator = locator
    }

    var keys: [String] { self.table.keys }

    func contains(_ key: String) -> Bool { self.table.contains(key: key) }

    /// An error at `key` of this table (or at the table itself).
    func error(_ key: String?, _ message: String) -> ConfigurationFileError {
        let path = key.map { self.path + [$0] } ?? self.path
        let dotted = path.map { $0.contains(".") || $0.contains(" ") ? "\"\($0)\"" : $0 }.joined(separator: ".")
        return ConfigurationFileError(path: self.file, line: self.locator.line(of: path), key: dotted.isEmpty ? nil : dotted, message: message)
    }

    /// Refuses any key of this table that is not in `known`: a misspelt key must not be silently ignored.
    func refuseUnknownKeys(_ known: Set<String>) throws(ConfigurationFileError) {
        for key in self.keys.sorted() where !known.contains(key) {
            throw self.error(key, "unknown key (known here: \(known.sorted().joined(separator: ", ")))")
        }
    }

    func string(_ key: String) throws(ConfigurationFileError) -> String? {
        guard let value = self.table[key] else { return nil }
        guard let string = value.string else { throw self.error(key, "must be a string, not a \(value.type)") }
        return string
    }

    func int(_ key: String) throws(ConfigurationFileError) -> Int? {
        guard let value = self.table[key] else { return nil }
        guard let int = value.int else { throw self.error(key, "must be a whole number, not a \(value.type)") }
        return int
    }

    /// A number, whole or not (seconds, for instance).
    func double(_ key: String) throws(ConfigurationFileError) -> Double? {
        guard let value = self.table[key] else { return nil }
        if let int = value.int { return Double(int) }
        guard let double = value.double else { throw self.error(key, "must be a number, not a \(value.type)") }
        return double
    }

    func bool(_ key: String) throws(ConfigurationFileError) -> Bool? {
        guard let value = self.table[key] else { return nil }
        guard let bool = value.bool else { throw self.error(key, "must be true or false, not a \(value.type)") }
        return bool
    }

    /// An array of strings; a single string is taken as an array of one.
    func strings(_ key: String) throws(ConfigurationFileError) -> [String]? {
        guard let value = self.table[key] else { return nil }
        if let string = value.string { return [string] }
        guard let array = value.array else { throw self.error(key, "must be an array of strings, not a \(value.type)") }
        var strings: [String] = []
        for element in array {
            guard let string = element.string else { throw self.error(key, "must be an array of strings; one element is a \(element.type)") }
            strings.append(string)
        }
        return strings
    }

    /// A key's value as command-line text: one string per argument value (an array gives several), or nil for a
    /// boolean, whose text is `true` / `false` in `bool`.
    enum ArgumentValue {
        case bool(Bool)
        case values([String])
        case table
    }

    func argumentValue(_ key: String) throws(ConfigurationFileError) -> ArgumentValue? {
        guard let value = self.table[key] else { return nil }
        switch value.type {
        case .bool: return .bool(value.bool ?? false)
        case .table: return .table
        case .array:
            var texts: [String] = []
            for element in value.array ?? [] {
                guard let text = Self.scalarText(element) else {
                    throw self.error(key, "an array here holds strings or numbers; one element is a \(element.type)")
                }
                texts.append(text)
            }
            return .values(texts)
        default:
            guard let text = Self.scalarText(value) else {
                throw self.error(key, "must be a string, number, true/false or an array, not a \(value.type)")
            }
            return .values([text])
        }
    }

    private static func scalarText(_ value: any TOMLValueConvertible) -> String? {
        if let string = value.string { return string }
        if let int = value.int { return String(int) }
        if let double = value.double { return String(double) }
        return nil
    }

    func table(_ key: String) throws(ConfigurationFileError) -> TOMLFields? {
        guard let value = self.table[key] else { return nil }
        guard let table = value.table else { throw self.error(key, "must be a table, not a \(value.type)") }
        return TOMLFields(table: table, path: self.path + [key], file: self.file, locator: self.locator)
    }
}
