#if canImport(Glibc)
import Glibc
#endif

/// Process-wide settings of glibc's allocator for the tunnel's processes (server, client, demo).
///
/// A session keeps each batch it sends (up to 128 KiB: NIO rounds buffers up to a power of two) until the peer
/// acknowledges it, so in bulk transfer buffers of that size are freed a few at a time, all the time. With glibc's
/// defaults that keeps crossing its trim threshold: each loop's arena gives the pages back (`madvise`) and faults them
/// in, zeroed, for the next batch. On this 2-core VM that cost a third of the CPU of a bulk CONNECT transfer
/// (`perf record -e cpu-clock`: page faults under `FrameEncoder.encode`). Buffers up to 1 MiB stay on the heap and
/// up to 16 MiB of free memory stays in each arena, which keeps the batches' pages mapped; memory beyond that is
/// still returned.
enum HeapTuning {
    private typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
    /// malloc.h's parameter numbers (glibc's ABI; the Glibc module does not export malloc.h).
    private static let trimThreshold: Int32 = -1
    private static let mmapThreshold: Int32 = -3

    static func apply() {
        #if canImport(Glibc)
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") else { return }
        let mallopt = unsafeBitCast(symbol, to: Mallopt.self)
        _ = mallopt(Self.mmapThreshold, 1 << 20)
        _ = mallopt(Self.trimThreshold, 16 << 20)
        #endif
    }
}
