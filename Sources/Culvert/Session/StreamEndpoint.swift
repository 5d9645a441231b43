import CompressNIO
import CulvertCore
import NIOCore

/// The driver's record of one stream's local socket: what is waiting to be framed, what is waiting to be
/// written, and how the socket is to be half-closed.
final class StreamEndpoint: @unchecked Sendable {
    // @unchecked: used only on the session's event loop.
    let id: StreamID
    let channel: any Channel
    let target: TargetAddress
    /// Bytes read from the socket that have no credit yet.
    var pendingSend: ByteBuffer?
    /// The socket reached EOF; FIN goes out once `pendingSend` is empty.
    var finPending = false
    /// Writes to the socket not completed yet.
    var outstandingWrites = 0
    /// The peer sent FIN: shut the socket's output once every write completed.
    var shutdownOutputWhenDrained = false
    /// Written to but not flushed.
    var needsFlush = false
    /// This stream's deflate context for what it sends, created on first use.
    var compressor: ZlibCompressor?
    /// This stream's inflate context for what it receives, created on first use.
    var decompressor: ZlibDecompressor?
    /// Whether sending compressed pays for this stream's data.
    var compressionPolicy = AdaptiveCompressionPolicy()
    /// zlib failed on this stream: it sends raw from now on.
    var compressionFailed = false

    init(id: StreamID, channel: any Channel, target: TargetAddress) {
        self.id = id
        self.channel = channel
        self.target = target
    }
}
