/// Decides, for one stream and direction, whether to compress the next DATA frame.
///
/// Data is judged over windows of ``windowBytes``: a window that compresses worse than ``maximumRatio`` (compressed
/// size over original size; TLS and other encrypted or already compressed data lands near 1.0) pauses compression.
/// While paused, frames go out raw; after ``recheckAfterBytes`` a new window is compressed to look again, and every
/// failed look doubles the wait (up to ``maximumRecheckBytes``), so incompressible data costs almost nothing.
public struct AdaptiveCompressionPolicy: Hashable, Sendable {
    public let windowBytes: Int
    public let maximumRatio: Double
    public let initialRecheckBytes: Int
    public let maximumRecheckBytes: Int

    private enum State: Hashable, Sendable {
        case compressing(original: Int, compressed: Int)
        case paused(remaining: Int)
    }

    private var state: State = .compressing(original: 0, compressed: 0)
    private var recheckAfterBytes: Int

    public init(
        windowBytes: Int = 64 * 1024,
        maximumRatio: Double = 0.95,
        initialRecheckBytes: Int = 1024 * 1024,
        maximumRecheckBytes: Int = 64 * 1024 * 1024
    ) {
        self.windowBytes = windowBytes
        self.maximumRatio = maximumRatio
        self.initialRecheckBytes = initialRecheckBytes
        self.maximumRecheckBytes = maximumRecheckBytes
        self.recheckAfterBytes = initialRecheckBytes
    }

    /// Whether compression is paused for this stream now.
    public var isPaused: Bool {
        if case .paused = self.state { return true }
        return false
    }

    /// Whether the next frame, of `bytes` original bytes, should be compressed. A paused stream counts the bytes
    /// toward its next look.
    public mutating func shouldCompress(bytes: Int) -> Bool {
        switch self.state {
        case .compressing:
            return true
        case .paused(let remaining):
            if remaining - bytes <= 0 {
                self.state = .compressing(original: 0, compressed: 0)
            } else {
                self.state = .paused(remaining: remaining - bytes)
            }
            return false
        }
    }

    /// Records a compressed frame's sizes; at the end of a window, pauses compression if it did not pay.
    public mutating func record(original: Int, compressed: Int) {
        guard case .compressing(var totalOriginal, var totalCompressed) = self.state else { return }
        totalOriginal += original
        totalCompressed += compressed
        guard totalOriginal >= self.windowBytes else {
            self.state = .compressing(original: totalOriginal, compressed: totalCompressed)
            return
        }
        if Double(totalCompressed) > Double(totalOriginal) * self.maximumRatio {
            self.state = .paused(remaining: self.recheckAfterBytes)
            self.recheckAfterBytes = min(self.recheckAfterBytes * 2, self.maximumRecheckBytes)
        } else {
            self.state = .compressing(original: 0, compressed: 0)
            self.recheckAfterBytes = self.initialRecheckBytes
        }
    }
}
