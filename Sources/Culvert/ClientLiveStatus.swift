import Foundation
public import CulvertTransport
public import NIOCore

/// What a client's live status line shows, sampled at one moment: the transport in use, the last round-trip time,
/// the open streams and the stream bytes moved so far (a status line turns two samples into rates).
public struct ClientLiveStatus: Sendable, Equatable {
    public var transport: TransportKind
    /// Whether the client has a working connection now (false while it reconnects or resumes).
    public var isConnected: Bool
    /// The last round trip measured on the current session (nil before the first answer).
    public var roundTrip: TimeAmount?
    /// Streams open on the current session and on those the server is draining.
    public var openStreams: Int
    /// Stream payload bytes the client has sent and received so far, over all its sessions (ended ones included, so
    /// the totals never go back).
    public var bytesSent: Int
    public var bytesReceived: Int
    /// Sessions the client holds: the current one and those the server is draining.
    public var sessions: Int

    public init(
        transport: TransportKind, isConnected: Bool, roundTrip: TimeAmount?, openStreams: Int, bytesSent: Int, bytesReceived: Int,
        sessions: Int
    ) {
        self.transport = transport
        self.isConnected = isConnected
        self.roundTrip = roundTrip
        self.openStreams = openStreams
        self.bytesSent = bytesSent
        self.bytesReceived = bytesReceived
        self.sessions = sessions
    }
}

extension ClientLiveStatus {
    /// The status as one line, with rates worked out from `previous` (the sample `elapsed` before this one):
    /// `websocket · rtt 0.42 ms · 2 streams · up 1.2 MiB/s · down 80 KiB/s`.
    public func line(after previous: ClientLiveStatus?, elapsed: TimeAmount) -> String {
        var parts = ["\(self.transport)"]
        if !self.isConnected { parts.append("reconnecting") }
        parts.append("rtt " + (self.roundTrip.map(Self.duration) ?? "-"))
        parts.append(self.openStreams == 1 ? "1 stream" : "\(self.openStreams) streams")
        if self.sessions > 1 { parts.append("\(self.sessions - 1) draining session\(self.sessions == 2 ? "" : "s")") }
        let seconds = Double(max(elapsed.nanoseconds, 1)) / 1e9
        // (The totals only grow; a sample older than this client's would show no rate rather than a negative one.)
        let up = previous.map { max(0, self.bytesSent - $0.bytesSent) } ?? 0
        let down = previous.map { max(0, self.bytesReceived - $0.bytesReceived) } ?? 0
        parts.append("up " + Self.rate(Double(up) / seconds))
        parts.append("down " + Self.rate(Double(down) / seconds))
        return parts.joined(separator: " · ")
    }

    /// `0.42 ms`, `4.2 ms`, `42 ms`, `1.3 s`.
    static func duration(_ amount: TimeAmount) -> String {
        let milliseconds = Double(amount.nanoseconds) / 1e6
        switch milliseconds {
        case ..<1: return String(format: "%.2f ms", milliseconds)
        case ..<10: return String(format: "%.1f ms", milliseconds)
        case ..<1000: return String(format: "%.0f ms", milliseconds)
        default: return String(format: "%.1f s", milliseconds / 1000)
        }
    }

    /// `0 B/s`, `512 B/s`, `80 KiB/s`, `1.2 MiB/s`, `3.4 GiB/s`.
    static func rate(_ bytesPerSecond: Double) -> String {
        let units = ["B/s", "KiB/s", "MiB/s", "GiB/s"]
        var value = bytesPerSecond
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return String(format: unit == 0 || value >= 10 ? "%.0f" : "%.1f", value) + " " + units[unit]
    }
}
