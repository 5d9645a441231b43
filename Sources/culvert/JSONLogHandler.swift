import Foundation
import Logging

/// A swift-log handler that writes one JSON object per line to standard error: `time`, `level`, `label`,
/// `message`, `source`, and the metadata (session, user, stream, transport, target, peer, …) as keys of their own.
///
/// Hand-written because swift-log ships only a text handler and none of the packages at hand writes log lines as
/// JSON (swift-otel exports to a collector, not to a log file). Each line goes out in one `write(2)`, so lines
/// from several threads never interleave.
struct JSONLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?

    init(label: String) {
        self.label = label
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var fields = self.metadata
        if let provided = self.metadataProvider?.get() { fields.merge(provided) { _, new in new } }
        if let extra = event.metadata { fields.merge(extra) { _, new in new } }
        var line = "{\"time\":" + Self.quoted(Self.timestamp()) + ",\"level\":" + Self.quoted(event.level.rawValue)
        line += ",\"label\":" + Self.quoted(self.label) + ",\"message\":" + Self.quoted(event.message.description)
        line += ",\"source\":" + Self.quoted(event.source)
        for key in fields.keys.sorted() where !Self.reservedKeys.contains(key) {
            line += "," + Self.quoted(key) + ":" + Self.json(fields[key]!)
        }
        line += "}\n"
        writeToStandardError(line)
    }

    /// Keys the line itself uses; metadata of the same name would make the object ambiguous.
    private static let reservedKeys: Set<String> = ["time", "level", "label", "message", "source"]

    private static func json(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let string): Self.quoted(string)
        case .stringConvertible(let convertible): Self.quoted(convertible.description)
        case .array(let values): "[" + values.map(Self.json).joined(separator: ",") + "]"
        case .dictionary(let dictionary):
            "{" + dictionary.keys.sorted().map { Self.quoted($0) + ":" + Self.json(dictionary[$0]!) }.joined(separator: ",") + "}"
        }
    }

    /// `text` as a JSON string: quotes, backslashes and control characters escaped (RFC 8259).
    static func quoted(_ text: String) -> String {
        var result = "\""
        result.reserveCapacity(text.utf8.count + 2)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            case _ where scalar.value < 0x20:
                result += "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count) + String(scalar.value, radix: 16)
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result + "\""
    }

    /// The time as RFC 3339 in UTC with milliseconds.
    private static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        let milliseconds = Int(now.tv_nsec / 1_000_000)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let millisecondsText = milliseconds < 10 ? "00\(milliseconds)" : milliseconds < 100 ? "0\(milliseconds)" : "\(milliseconds)"
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(millisecondsText)Z"
    }
}

/// Writes all of `text` to standard error with `write(2)` (in one call unless the kernel takes less), unbuffered, so
/// that what several threads write never interleaves within one call's text.
func writeToStandardError(_ text: String) {
    var bytes = Array(text.utf8)
    bytes.withUnsafeMutableBytes { buffer in
        var offset = 0
        while offset < buffer.count {
            let written = Glibc.write(2, buffer.baseAddress! + offset, buffer.count - offset)
            if written <= 0 { return }
            offset += written
        }
    }
}
