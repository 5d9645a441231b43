/// Counters of one session, for the demo, the benchmark and logs.
public struct SessionStatistics: Hashable, Sendable {
    /// Stream payload bytes sent to the peer.
    public var bytesSent = 0
    /// Stream payload bytes received from the peer.
    public var bytesReceived = 0
    public var streamsOpened = 0
    public var streamsRefused = 0
    public var streamsReset = 0
    public var transportMessagesSent = 0
    /// DATA payload bytes put on the wire (after compression); equal to ``bytesSent`` without compression.
    public var payloadBytesOnWireSent = 0
    /// DATA frames sent compressed.
    public var compressedFramesSent = 0
    /// DATA frames sent raw.
    public var rawFramesSent = 0

    public init() {}
}
