public import NIOCore
import NIOPosix

/// Opens the TCP connection every transport starts with, with TCP_NODELAY, and turns connect failures into
/// ``TransportError/unreachable(endpoint:reason:)``.
public enum TransportDialer {
    public static func connect(
        host: String,
        port: Int,
        on eventLoop: any EventLoop,
        timeout: TimeAmount,
        sourceAddress: SocketAddress? = nil,
        initializer: @escaping @Sendable (any Channel) throws -> Void
    ) -> EventLoopFuture<any Channel> {
        var bootstrap = ClientBootstrap(group: eventLoop)
        if let sourceAddress { bootstrap = bootstrap.bind(to: sourceAddress) }
        return bootstrap
            .connectTimeout(timeout)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try initializer(channel) }
            }
            .connect(host: host, port: port)
            .flatMapErrorThrowing { error in
                throw TransportError.unreachable(endpoint: "\(host):\(port)", reason: Self.describe(error))
            }
    }

    /// A short reason for a connect failure (`connection refused`, `host not found`, …).
    public static func describe(_ error: any Error) -> String {
        if let connectionError = error as? NIOConnectionError {
            if connectionError.dnsAAAAError != nil && connectionError.dnsAError != nil
                && connectionError.connectionErrors.isEmpty
            {
                return "host not found"
            }
            if let first = connectionError.connectionErrors.first {
                return Self.describe(first.error)
            }
            return "could not connect"
        }
        if let ioError = error as? IOError {
            switch ioError.errnoCode {
            case 111: return "connection refused"
            case 110: return "connection timed out"
            case 113, 101: return "no route to host"
            default: return "\(ioError)"
            }
        }
        if error is ChannelError, case ChannelError.connectTimeout = error {
            return "connection timed out"
        }
        return "\(error)"
    }
}

extension TimeAmount {
    /// The amount in seconds, for messages.
    public var seconds: Double { Double(self.nanoseconds) / 1e9 }

    /// The amount as people say it in a log line: `0.2 s`, `3 s`, `2 min 30 s`, `1 h 5 min`.
    public var roundedText: String {
        let seconds = self.seconds
        if seconds <= 0 { return "0 s" }
        if seconds < 0.95 { return "\(max(0.1, (seconds * 10).rounded() / 10)) s" }
        let whole = Int(seconds.rounded())
        if whole < 60 { return "\(whole) s" }
        if whole < 3600 { return whole % 60 == 0 ? "\(whole / 60) min" : "\(whole / 60) min \(whole % 60) s" }
        let minutes = (whole % 3600 + 30) / 60
        return minutes == 0 ? "\(whole / 3600) h" : "\(whole / 3600) h \(minutes) min"
    }
}
