import Foundation
import NIOCore
import NIOPosix

/// A small HTTP forward proxy on loopback, for tests and the demo: `CONNECT host:port` tunnels and absolute-form
/// requests (`GET http://host:port/path`), each client connection relayed byte for byte to one upstream after its
/// first request head (rewritten to origin-form). It passes `Upgrade` on, unlike many real proxies, can demand
/// Basic credentials, cut connections, and inject the faults of real proxies (``Fault``) one by one. It stands beside
/// the real proxies the tests start, never instead of them.
public final class ForwardProxy: Sendable {
    public struct Configuration: Sendable {
        /// When set, requests without these Basic credentials get 407.
        public var credentials: (user: String, password: String)?
        /// When set, every relayed connection is cut after the upstream sent this many bytes (as proxies do that
        /// limit response sizes, or drop connections), to test that transports recover.
        public var cutAfterBytes: Int?

        /// Misbehaviours of widely deployed proxies, switched on one by one.
        public var faults: Set<Fault>

        public init(
            credentials: (user: String, password: String)? = nil,
            cutAfterBytes: Int? = nil,
            faults: Set<Fault> = []
        ) {
            self.credentials = credentials
            self.cutAfterBytes = cutAfterBytes
            self.faults = faults
        }
    }

    /// A way real proxies break tunnels.
    public enum Fault: Hashable, Sendable, CaseIterable {
        /// Drops `Upgrade` and `Connection` from requests, so an upgrade reaches the server as a plain request.
        case stripUpgrade
        /// Relays the answer to an upgrade request (the 101), then nothing more in either direction.
        case nothingAfterUpgrade
        /// Answers CONNECT with 403.
        case refuseConnect
        /// Answers CONNECT with 200, then relays nothing.
        case connectThenNothing
    }

    private let channel: any Channel

    public var port: Int { self.channel.localAddress!.port! }

    private init(channel: any Channel) {
        self.channel = channel
    }

    public static func start(configuration: Configuration = .init(), group: any EventLoopGroup) async throws -> ForwardProxy {
        let expectedAuthorization = configuration.credentials.map {
            "Basic " + Data("\($0.user):\($0.password)".utf8).base64EncodedString()
        }
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ForwardProxyHandler(
                            expectedAuthorization: expectedAuthorization,
                            cutAfterBytes: configuration.cutAfterBytes,
                            faults: configuration.faults
                        )
                    )
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        return ForwardProxy(channel: channel)
    }

    public func close() async throws {
        try await self.channel.close()
    }
}

/// Reads one request head, then joins the client to the upstream it names.
private final class ForwardProxyHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let expectedAuthorization: String?
    private let cutAfterBytes: Int?
    private let faults: Set<ForwardProxy.Fault>
    private var buffered = ByteBuffer()
    private var headParsed = false
    /// After a CONNECT answered 200 by `connectThenNothing`: every byte is swallowed.
    private var swallowing = false

    init(
        expectedAuthorization: String?,
        cutAfterBytes: Int?,
        faults: Set<ForwardProxy.Fault>
    ) {
        self.expectedAuthorization = expectedAuthorization
        self.cutAfterBytes = cutAfterBytes
        self.faults = faults
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = self.unwrapInboundIn(data)
        if self.swallowing { return }
        if self.headParsed {
            self.buffered.writeBuffer(&bytes)
            return
        }
        self.buffered.writeBuffer(&bytes)
        guard let end = self.buffered.readableBytesView.firstRange(of: Array("\r\n\r\n".utf8)) else {
            if self.buffered.readableBytes > 64 * 1024 { self.answer(context: context, "431 Request Header Fields Too Large") }
            return
        }
        self.headParsed = true
        let headLength = end.upperBound - self.buffered.readableBytesView.startIndex
        let head = self.buffered.readString(length: headLength)!
        var lines = head.split(separator: "\r\n", omittingEmptySubsequences: true).map(String.init)
        let requestLine = lines.removeFirst().split(separator: " ", maxSplits: 2).map(String.init)
        guard requestLine.count == 3 else {
            self.answer(context: context, "400 Bad Request")
            return
        }
        if let expected = self.expectedAuthorization {
            let given = lines.first { $0.lowercased().hasPrefix("proxy-authorization:") }
                .map { String($0.dropFirst("proxy-authorization:".count)).trimmingCharacters(in: .whitespaces) }
            guard given == expected else {
                self.answer(context: context, "407 Proxy Authentication Required",
                            extra: "Proxy-Authenticate: Basic realm=\"culvert-test\"\r\n")
                return
            }
        }
        let method = requestLine[0], target = requestLine[1], version = requestLine[2]
        let isUpgrade = lines.contains { $0.lowercased().hasPrefix("upgrade:") }
        let headers = lines.filter {
            let lower = $0.lowercased()
            if self.faults.contains(.stripUpgrade) && (lower.hasPrefix("upgrade:") || lower.hasPrefix("connection:")) {
                return false
            }
            return !lower.hasPrefix("proxy-authorization:") && !lower.hasPrefix("proxy-connection:")
        }
        if method == "CONNECT" {
            guard let (host, port) = Self.splitAuthority(target) else {
                self.answer(context: context, "400 Bad Request")
                return
            }
            if self.faults.contains(.refuseConnect) {
                self.answer(context: context, "403 Forbidden")
                return
            }
            if self.faults.contains(.connectThenNothing) {
                self.swallowing = true
                self.buffered = ByteBuffer()
                context.writeAndFlush(NIOAny(ByteBuffer(string: "\(version) 200 Connection established\r\n\r\n")), promise: nil)
                return
            }
            self.join(context: context, host: host, port: port, preface: "\(version) 200 Connection established\r\n\r\n", toClient: true)
        } else {
            guard target.lowercased().hasPrefix("http://") else {
                self.answer(context: context, "400 Bad Request")
                return
            }
            let rest = target.dropFirst("http://".count)
            let slash = rest.firstIndex(of: "/") ?? rest.endIndex
            guard let (host, port) = Self.splitAuthority(String(rest[..<slash]), defaultPort: 80) else {
                self.answer(context: context, "400 Bad Request")
                return
            }
            let path = slash == rest.endIndex ? "/" : String(rest[slash...])
            let rewritten = "\(method) \(path) \(version)\r\n" + headers.map { $0 + "\r\n" }.joined() + "\r\n"
            let silenceAfterAnswer = isUpgrade && self.faults.contains(.nothingAfterUpgrade) && !self.faults.contains(.stripUpgrade)
            self.join(context: context, host: host, port: port, preface: rewritten, toClient: false,
                      silenceAfterAnswerHead: silenceAfterAnswer)
        }
    }

    /// Connects upstream, sends `preface` (to the client for CONNECT, upstream otherwise) and whatever followed
    /// the head, then relays.
    private func join(
        context: ChannelHandlerContext,
        host: String,
        port: Int,
        preface: String,
        toClient: Bool,
        silenceAfterAnswerHead: Bool = false
    ) {
        let client = context.channel
        context.channel.setOption(.autoRead, value: false).whenComplete { _ in }
        let (clientRelay, upstreamRelay) = ByteRelay.pair(cutAfter: self.cutAfterBytes)
        if silenceAfterAnswerHead { upstreamRelay.silenceAfterHead() }
        let loopBound = NIOLoopBound((self, context, clientRelay, upstreamRelay), eventLoop: context.eventLoop)
        ClientBootstrap(group: context.eventLoop)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .connect(host: host, port: port)
            .whenComplete { result in
                let (handler, context, clientRelay, upstreamRelay) = loopBound.value
                switch result {
                case .failure:
                    handler.answer(context: context, "502 Bad Gateway")
                case .success(let upstream):
                    var rest = handler.buffered
                    handler.buffered = ByteBuffer()
                    let prefaceBuffer = ByteBuffer(string: preface)
                    if toClient {
                        context.writeAndFlush(NIOAny(prefaceBuffer), promise: nil)
                    } else {
                        upstream.write(prefaceBuffer, promise: nil)
                    }
                    if rest.readableBytes > 0 { upstream.write(rest.readSlice(length: rest.readableBytes)!, promise: nil) }
                    upstream.flush()
                    do {
                        try upstream.pipeline.syncOperations.addHandler(upstreamRelay)
                        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
                        try context.pipeline.syncOperations.addHandler(clientRelay)
                        client.setOption(.autoRead, value: true).whenComplete { _ in }
                    } catch {
                        upstream.close(promise: nil)
                        context.close(promise: nil)
                    }
                }
            }
    }

    private func answer(context: ChannelHandlerContext, _ status: String, extra: String = "") {
        let body = "test proxy: \(status)\n"
        let response = "HTTP/1.1 \(status)\r\n\(extra)Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
        context.writeAndFlush(NIOAny(ByteBuffer(string: response))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    private static func splitAuthority(_ authority: String, defaultPort: Int? = nil) -> (String, Int)? {
        if authority.hasPrefix("["), let close = authority.firstIndex(of: "]") {
            let host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            if after.isEmpty { return defaultPort.map { (host, $0) } }
            guard after.hasPrefix(":"), let port = Int(after.dropFirst()) else { return nil }
            return (host, port)
        }
        guard let colon = authority.lastIndex(of: ":") else { return defaultPort.map { (authority, $0) } }
        guard let port = Int(authority[authority.index(after: colon)...]) else { return nil }
        return (String(authority[..<colon]), port)
    }
}
