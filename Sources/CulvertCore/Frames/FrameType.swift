/// The one-byte type that starts every Culvert frame header.
///
/// Types below `0x10` belong to the handshake, `0x10 ..< 0x20` to streams and reverse listeners (these are the
/// *reliable* frames that the session sequence-numbers and replays), `0x20 ..< 0x30` to session control, and `0x30`
/// to end-to-end protection (the container of every frame after the handshake).
public enum FrameType: UInt8, Sendable, CaseIterable {
    case hello = 0x01
    case challenge = 0x02
    case auth = 0x03
    case welcome = 0x04

    case open = 0x10
    case openOK = 0x11
    case openFail = 0x12
    case data = 0x13
    case window = 0x14
    case fin = 0x15
    case rst = 0x16
    /// Reverse forwarding: the client asks the server to listen (the stream id field carries the request id).
    case listen = 0x17
    case listenOK = 0x18
    case listenFail = 0x19

    case ping = 0x20
    case pong = 0x21
    case ack = 0x22
    case goAway = 0x23

    case sealed = 0x30

    /// Whether frames of this type are counted by the session's sequence numbers and kept for replay.
    public var isReliable: Bool {
        (0x10..<0x20).contains(self.rawValue)
    }
}
