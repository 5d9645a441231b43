import Foundation
import NIOConcurrencyHelpers
import Synchronization

/// The client's one-line live status at the bottom of the terminal: redrawn in place (`\r`, erase line), cleared
/// before each log line and drawn again after it, so that log lines scroll above it and never run into it.
///
/// Only for a standard error that is a terminal; everything goes out through `write(2)` under one lock.
final class TerminalStatusLine: Sendable {
    static let shared = TerminalStatusLine()

    /// The line on the screen now (nil: none).
    private let shown = NIOLockedValueBox<String?>(nil)
    /// Whether a status line is drawn in this run at all; until then log lines skip the lock.
    private let isActive = Atomic<Bool>(false)

    /// Says that a status line will be drawn, before the first one is (so no log line can race the first draw).
    func activate() {
        self.isActive.store(true, ordering: .sequentiallyConsistent)
    }

    /// Draws `line` in place of the one shown, cut to the terminal's width so that it never wraps.
    func show(_ line: String) {
        self.activate()
        let fitted = Self.fitted(line, width: Self.terminalWidth())
        self.shown.withLockedValue { shown in
            shown = fitted
            Self.write("\r\u{1B}[2K" + fitted)
        }
    }

    /// Runs `body` (which writes a log line) with the status line cleared, and draws it again after.
    func aroundLog(_ body: () -> Void) {
        guard self.isActive.load(ordering: .sequentiallyConsistent) else { return body() }
        self.shown.withLockedValue { shown in
            guard let line = shown else { return body() }
            Self.write("\r\u{1B}[2K")
            body()
            Self.write(line)
        }
    }

    /// Removes the line for good (the client is stopping).
    func clear() {
        self.shown.withLockedValue { shown in
            if shown != nil { Self.write("\r\u{1B}[2K") }
            shown = nil
        }
    }

    static func fitted(_ line: String, width: Int) -> String {
        let room = max(width - 1, 10)
        return line.count <= room ? line : String(line.prefix(room - 1)) + "…"
    }

    private static func terminalWidth() -> Int {
        var size = winsize()
        guard ioctl(2, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 else { return 80 }
        return Int(size.ws_col)
    }

    private static func write(_ text: String) {
        writeToStandardError(text)
    }
}
