/// Limits and windows of the multiplexer. The defaults suit a tunnel over the internet; every value is configurable.
public struct MuxConfiguration: Hashable, Sendable {
    /// Credit each stream starts with, in bytes.
    public var initialStreamWindow: Int
    /// The largest window a stream grows to when its reader keeps up, in bytes.
    public var maximumStreamWindow: Int
    /// Bytes that may be buffered for receiving across all streams of a session (granted credit plus data not yet
    /// written to the local socket). Past it, credit is withheld; nothing is dropped.
    public var sessionMemoryLimit: Int
    /// The largest DATA payload this side sends and accepts, so one bulk stream cannot starve the others.
    public var maximumDataPayload: Int
    /// Streams a session may have open at once.
    public var maximumStreams: Int

    public init(
        initialStreamWindow: Int = 256 * 1024,
        maximumStreamWindow: Int = 16 * 1024 * 1024,
        sessionMemoryLimit: Int = 64 * 1024 * 1024,
        maximumDataPayload: Int = 32 * 1024,
        maximumStreams: Int = 4096
    ) {
        self.initialStreamWindow = initialStreamWindow
        self.maximumStreamWindow = max(maximumStreamWindow, initialStreamWindow)
        self.sessionMemoryLimit = sessionMemoryLimit
        self.maximumDataPayload = maximumDataPayload
        self.maximumStreams = maximumStreams
    }
}
