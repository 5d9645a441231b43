import Foundation

/// A TOML file of command-line settings (`culvert server --config FILE`): each top-level key is the name of a long
/// flag, and its value that flag's value, so every flag has a key without a list to keep in step.
///
/// ```toml
/// listen = "0.0.0.0:8080"
/// users = "/etc/culvert/users.toml"
/// allow = ["db.internal:5432", "*:22"]
/// no-compress = true
/// ```
/// The file becomes arguments placed before the command line's, and a key whose flag the command line gives is
/// left out, so flags given on the command line win (for repeatable flags too). Where the command's parser refuses
/// an argument, ``place(ofArgumentError:)`` says which key and line it came from.
public struct FlagFile: Sendable {
    /// One key of the file and the arguments it became.
    public struct Setting: Hashable, Sendable {
        public var key: String
        public var line: Int?
        public var arguments: [String]
    }

    public let path: String
    public let settings: [Setting]

    /// The arguments, in the file's order (keys sorted: TOML tables are unordered).
    public var arguments: [String] { self.settings.flatMap(\.arguments) }

    /// The keys whose values differ between `earlier` and this file (added, removed or changed), sorted.
    public func keysChanged(since earlier: FlagFile) -> [String] {
        let before = Dictionary(earlier.settings.map { ($0.key, $0.arguments) }, uniquingKeysWith: { $1 })
        let now = Dictionary(self.settings.map { ($0.key, $0.arguments) }, uniquingKeysWith: { $1 })
        return Set(before.keys).union(now.keys).filter { before[$0] != now[$0] }.sorted()
    }

    /// Reads `path`, leaving out keys whose flags `commandLine` gives; `refused` are keys that may not appear
    /// (`config` itself).
    public static func load(path: String, commandLine: [String], refused: Set<String> = ["config"]) throws(ConfigurationFileError) -> FlagFile {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigurationFileError(path: path, line: nil, key: nil, message: "cannot read it: \(describeUnreadable(path))")
        }
        return try Self.parse(text, file: path, commandLine: commandLine, refused: refused)
    }

    public static func parse(
        _ text: String, file: String, commandLine: [String], refused: Set<String> = ["config"]
    ) throws(ConfigurationFileError) -> FlagFile {
        let fields = try TOMLFields.parse(text, file: file)
        let given = Set(commandLine.compactMap(Self.longFlagName))
        var settings: [Setting] = []
        for key in fields.keys.sorted() {
            guard !refused.contains(key) else { throw fields.error(key, "may not be set in this file") }
            guard !given.contains(key) else { continue }
            let flag = "--" + key
            let arguments: [String]
            switch try fields.argumentValue(key) {
            case .bool(let on): arguments = on ? [flag] : []
            case .values(let values): arguments = values.flatMap { [flag, $0] }
            case .table: throw fields.error(key, "must be a value (a string, number, true/false or an array), not a table")
            case nil: arguments = []
            }
            settings.append(Setting(key: key, line: fields.error(key, "").line, arguments: arguments))
        }
        return FlagFile(path: file, settings: settings)
    }

    /// `--name` or `--name=value` → `name`.
    private static func longFlagName(_ argument: String) -> String? {
        guard argument.hasPrefix("--"), argument.count > 2 else { return nil }
        let name = argument.dropFirst(2)
        return String(name.prefix { $0 != "=" })
    }

    /// The file's place that an argument parser's error message is about: the setting whose flag it names (the
    /// longest, so `--allow-any` is not taken for `--allow`), or whose value it quotes.
    public func place(ofArgumentError message: String) -> Setting? {
        let byFlag = self.settings.filter { setting in
            let flag = "--" + setting.key
            return message.contains("'\(flag)'") || message.contains("\(flag) ") || message.contains("\(flag)<")
                || message.contains("'\(flag) ") || message.hasSuffix(flag)
        }
        if let found = byFlag.max(by: { $0.key.count < $1.key.count }) { return found }
        return self.settings.first { setting in
            setting.arguments.dropFirst().contains { !$0.hasPrefix("--") && message.contains("'\($0)'") }
        }
    }
}
