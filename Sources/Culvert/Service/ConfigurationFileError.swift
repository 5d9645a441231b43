/// Why a configuration or users file was refused: the file, the line and the key where it is wrong, and what is
/// wrong with it, in one line.
public struct ConfigurationFileError: Error, Hashable, Sendable, CustomStringConvertible {
    public var path: String
    /// 1-based; nil when the place cannot be told (the file as a whole).
    public var line: Int?
    /// The dotted key, e.g. `users.alice.max-sessions`; nil for a syntax error.
    public var key: String?
    public var message: String

    public init(path: String, line: Int?, key: String?, message: String) {
        self.path = path
        self.line = line
        self.key = key
        self.message = message
    }

    public var description: String {
        let place = self.line.map { "\(self.path) line \($0)" } ?? self.path
        return self.key.map { "\(place), key \($0): \(self.message)" } ?? "\(place): \(self.message)"
    }
}
