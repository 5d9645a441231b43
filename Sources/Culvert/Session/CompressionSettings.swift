/// Per-stream zlib compression of DATA payloads: whether this side wants it and how it compresses.
///
/// The client asks for compression (`culvert client --compress`); the server agrees unless started with
/// `--no-compress`. Each stream and direction has its own deflate context, so bytes of different streams never share
/// a dictionary (otherwise one stream's data could leak through another's compressed sizes).
public struct CompressionSettings: Hashable, Sendable {
    /// Client: ask for compression. Server: agree when asked.
    public var enabled: Bool
    /// zlib level, 1 (fastest) to 9 (smallest).
    public var level: Int32
    /// Base-2 logarithm of the deflate window, 9 to 15.
    public var windowBits: Int32
    /// zlib memory level, 1 to 9.
    public var memoryLevel: Int32

    public init(enabled: Bool, level: Int32 = 6, windowBits: Int32 = 15, memoryLevel: Int32 = 8) {
        self.enabled = enabled
        self.level = level
        self.windowBits = windowBits
        self.memoryLevel = memoryLevel
    }

    /// Bytes one stream's compressor holds (zlib: `(1 << (windowBits + 2)) + (1 << (memoryLevel + 9))`).
    public var compressorMemory: Int { (1 << (Int(self.windowBits) + 2)) + (1 << (Int(self.memoryLevel) + 9)) }

    /// Bytes one stream's decompressor holds (a 32 KiB window plus about 7 KiB of state).
    public static let decompressorMemory = (1 << 15) + 7 * 1024
}
