import Foundation
public import NIOCore
import NIOPosix

/// A small HTTP proxy on loopback for tests, the demo and the benchmark, that injects the faults of widely deployed
/// proxies (``Fault``) one by one or in combination. It stands beside the real proxies the tests start (tinyproxy,
/// nginx), never instead of them.
///
/// As a forward proxy it takes `CONNECT host:port` and absolute-form requests (`GET http://host:port/path`); as a
/// reverse proxy (``Configuration/upstream``) it sends every origin-form request to one upstream. CONNECT tunnels and
/// upgrades are relayed byte for byte after their first head; every other request is relayed as HTTP, message by
/// message, which is where buffering, re-framing, body limits and slow-body cuts apply.
public final class FaultProxy: Sendable {
    public struct Configuration: Sendable {
        /// When set, a reverse proxy in front of this upstream; when nil, a forward proxy.
        public var upstream: (host: String, port: Int)?
        /// When set, requests without these Basic credentials get 407 (forward proxy only).
        public var credentials: (user: String, password: String)?
        /// When set, every relayed connection is cut after the upstream sent this many bytes (as proxies do that
        /// limit response sizes, or drop connections), to test that transports recover.
        public var cutAfterBytes: Int?
        /// Misbehaviours of widely deployed proxies.
        public var faults: Set<Fault>

        public init(
            upstream: (host: String, port: Int)? = nil,
            credentials: (user: String, password: String)? = nil,
            cutAfterBytes: Int? = nil,
            faults: Set<Fault> = []
        ) {
            self.upstream = upstream
            self.credentials = credentials
            self.cutAfterBytes = cutAfterBytes
            self.faults = faults
        }
    }

    /// A way real proxies break tunnels.
    public enum Fault: Hashable, Sendable, CustomStringConvertible {
        /// Drops `Upgrade` and `Connection` from requests, so an upgrade reaches the server as a plain request.
        case stripUpgrade
        /// Relays the answer to an upgrade request (the 101), then nothing more in either direction.
        case nothingAfterUpgrade
        /// Answers CONNECT with 403.
        case refuseConnect
        /// Answers CONNECT with 200, then relays nothing.
        case connectThenNothing
        /// Holds every response, status line included, until it ends; then sends it whole with a Content-Length.
        case bufferResponses
        /// Passes a response on in bursts: what arrived is sent every `interval` (and at the response's end).
        case burstResponses(interval: TimeAmount)
        /// Holds every request body until it ends; then sends it re-framed with a Content-Length.
        case bufferRequestBodies
        /// Cuts a request (both connections) whose body has not ended `after` its head arrived.
        case cutSlowRequestBodies(after: TimeAmount)
        /// Cuts a connection that carried no byte either way for `timeout`: a 504 when a response was awaited.
        case idleTimeout(TimeAmount)
        /// Answers 413 to a request whose body is over `bytes` (declared, or counted as it streams).
        case limitRequestBodies(bytes: Int)
        /// Delays everything it passes on, each way, by `delay`.
        case latency(TimeAmount)
        /// Answers 403 to a request whose body's media type (`Content-Type` without parameters) is one of these,
        /// as content filters that block uploads of some types do.
        case refuseRequestContentTypes([String])
        /// Puts a 403 block page in place of a response whose media type is one of these (binary downloads blocked).
        case refuseResponseContentTypes([String])
        /// A response over `bytes`: a 403 block page in its place when its length is declared, else cut (both
        /// connections) once that many of its body bytes have passed, as a proxy's reply size limit does.
        case limitResponseBodies(bytes: Int)

        public var description: String {
            switch self {
            case .stripUpgrade: "stripUpgrade"
            case .nothingAfterUpgrade: "nothingAfterUpgrade"
            case .refuseConnect: "refuseConnect"
            case .connectThenNothing: "connectThenNothing"
            case .bufferResponses: "bufferResponses"
            case .burstResponses(let interval): "burstResponses(\(interval.nanoseconds / 1_000_000)ms)"
            case .bufferRequestBodies: "bufferRequestBodies"
            case .cutSlowRequestBodies(let after): "cutSlowRequestBodies(\(after.nanoseconds / 1_000_000)ms)"
            case .idleTimeout(let timeout): "idleTimeout(\(timeout.nanoseconds / 1_000_000)ms)"
            case .limitRequestBodies(let bytes): "limitRequestBodies(\(bytes))"
            case .latency(let delay): "latency(\(delay.nanoseconds / 1_000_000)ms)"
            case .refuseRequestContentTypes(let types): "refuseRequestContentTypes(\(types.joined(separator: ",")))"
            case .refuseResponseContentTypes(let types): "refuseResponseContentTypes(\(types.joined(separator: ",")))"
            case .limitResponseBodies(let bytes): "limitResponseBodies(\(bytes))"
            }
        }
    }

    private let channel: any Channel

    public var port: Int { self.channel.localAddress!.port! }

    private init(channel: any Channel) {
        self.channel = channel
    }

    public static func start(configuration: Configuration = .init(), group: any EventLoopGroup) async throws -> FaultProxy {
        let settings = FaultProxySettings(configuration)
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let delay = settings.latency {
                        try channel.pipeline.syncOperations.addHandler(DelayedWriteHandler(delay: delay))
                    }
                    if let timeout = settings.idleTimeout {
                        try channel.pipeline.syncOperations.addHandler(IdleStateHandler(allTimeout: timeout))
                    }
                    try channel.pipeline.syncOperations.addHandler(FaultProxyHeadHandler(settings: settings))
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        return FaultProxy(channel: channel)
    }

    public func close() async throws {
        try await self.channel.close()
    }
}

/// The configuration in the form the handlers use.
struct FaultProxySettings: Sendable {
    let upstream: (host: String, port: Int)?
    let expectedAuthorization: String?
    let cutAfterBytes: Int?
    let faults: Set<FaultProxy.Fault>
    let burstInterval: TimeAmount?
    let slowBodyLimit: TimeAmount?
    let idleTimeout: TimeAmount?
    let requestBodyLimit: Int?
    let latency: TimeAmount?
    /// Media types refused in requests and in responses (lowercased), and the response body limit.
    let refusedRequestTypes: Set<String>
    let refusedResponseTypes: Set<String>
    let responseBodyLimit: Int?

    init(_ configuration: FaultProxy.Configuration) {
        self.upstream = configuration.upstream
        self.expectedAuthorization = configuration.credentials.map {
            "Basic " + Data("\($0.user):\($0.password)".utf8).base64EncodedString()
        }
        self.cutAfterBytes = configuration.cutAfterBytes
        self.faults = configuration.faults
        var burst: TimeAmount?, slow: TimeAmount?, idle: TimeAmount?, limit: Int?, latency: TimeAmount?
        var requestTypes = Set<String>(), responseTypes = Set<String>(), responseLimit: Int?
        for fault in configuration.faults {
            switch fault {
            case .burstResponses(let interval): burst = interval
            case .cutSlowRequestBodies(let after): slow = after
            case .idleTimeout(let timeout): idle = timeout
            case .limitRequestBodies(let bytes): limit = bytes
            case .latency(let delay): latency = delay
            case .refuseRequestContentTypes(let types): requestTypes.formUnion(types.map { $0.lowercased() })
            case .refuseResponseContentTypes(let types): responseTypes.formUnion(types.map { $0.lowercased() })
            case .limitResponseBodies(let bytes): responseLimit = bytes
            case .stripUpgrade, .nothingAfterUpgrade, .refuseConnect, .connectThenNothing, .bufferResponses,
                .bufferRequestBodies:
                break
            }
        }
        self.burstInterval = burst
        self.slowBodyLimit = slow
        self.idleTimeout = idle
        self.requestBodyLimit = limit
        self.latency = latency
        self.refusedRequestTypes = requestTypes
        self.refusedResponseTypes = responseTypes
        self.responseBodyLimit = responseLimit
    }

    /// The media type of a `Content-Type` value: lowercased, without parameters.
    static func mediaType(_ contentType: String?) -> String? {
        guard let contentType, let type = contentType.split(separator: ";").first else { return nil }
        return type.trimmingCharacters(in: .whitespaces).lowercased()
    }

    func has(_ fault: FaultProxy.Fault) -> Bool { self.faults.contains(fault) }

    /// Where a request for `target` (its request target, or a CONNECT authority) goes; nil when it names none.
    func destination(of target: String, isConnect: Bool) -> (host: String, port: Int, path: String)? {
        if let upstream = self.upstream {
            return target.hasPrefix("/") ? (upstream.host, upstream.port, target) : nil
        }
        if isConnect {
            return Self.splitAuthority(target).map { ($0.0, $0.1, "") }
        }
        guard target.lowercased().hasPrefix("http://") else { return nil }
        let rest = target.dropFirst("http://".count)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        guard let (host, port) = Self.splitAuthority(String(rest[..<slash]), defaultPort: 80) else { return nil }
        return (host, port, slash == rest.endIndex ? "/" : String(rest[slash...]))
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

/// Reads a connection's first request head and decides how the connection is relayed: CONNECT and upgrade requests
/// byte for byte to one upstream, anything else as HTTP messages by ``HTTPFaultRelay``.
final class FaultProxyHeadHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let settings: FaultProxySettings
    private var buffered = ByteBuffer()
    private var headParsed = false
    /// After a CONNECT answered 200 by `connectThenNothing`: every byte is swallowed.
    private var swallowing = false

    init(settings: FaultProxySettings) {
        self.settings = settings
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = self.unwrapInboundIn(data)
        if self.swallowing { return }
        self.buffered.writeBuffer(&bytes)
        if self.headParsed { return }
        guard let end = self.buffered.readableBytesView.firstRange(of: Array("\r\n\r\n".utf8)) else {
            if self.buffered.readableBytes > 64 * 1024 { self.answer(context: context, "431 Request Header Fields Too Large") }
            return
        }
        self.headParsed = true
        let headLength = end.upperBound - self.buffered.readableBytesView.startIndex
        let head = self.buffered.getString(at: self.buffered.readerIndex, length: headLength)!
        var lines = head.split(separator: "\r\n", omittingEmptySubsequences: true).map(String.init)
        let requestLine = lines.removeFirst().split(separator: " ", maxSplits: 2).map(String.init)
        guard requestLine.count == 3 else {
            self.answer(context: context, "400 Bad Request")
            return
        }
        if let expected = self.settings.expectedAuthorization {
            let given = lines.first { $0.lowercased().hasPrefix("proxy-authorization:") }
                .map { String($0.dropFirst("proxy-authorization:".count)).trimmingCharacters(in: .whitespaces) }
            guard given == expected else {
                self.answer(context: context, "407 Proxy Authentication Required",
                            extra: "Proxy-Authenticate: Basic realm=\"culvert-test\"\r\n")
                return
            }
        }
        let method = requestLine[0], target = requestLine[1], version = requestLine[2]
        if method == "CONNECT" {
            guard self.settings.upstream == nil else {
                self.answer(context: context, "405 Method Not Allowed")
                return
            }
            guard let destination = self.settings.destination(of: target, isConnect: true) else {
                self.answer(context: context, "400 Bad Request")
                return
            }
            if self.settings.has(.refuseConnect) {
                self.answer(context: context, "403 Forbidden")
                return
            }
            self.buffered.moveReaderIndex(forwardBy: headLength)
            if self.settings.has(.connectThenNothing) {
                self.swallowing = true
                self.buffered = ByteBuffer()
                context.writeAndFlush(NIOAny(ByteBuffer(string: "\(version) 200 Connection established\r\n\r\n")), promise: nil)
                return
            }
            self.join(context: context, host: destination.host, port: destination.port,
                      preface: "\(version) 200 Connection established\r\n\r\n", toClient: true)
            return
        }
        guard let destination = self.settings.destination(of: target, isConnect: false) else {
            self.answer(context: context, "400 Bad Request")
            return
        }
        let isUpgrade = lines.contains { $0.lowercased().hasPrefix("upgrade:") }
        guard isUpgrade && !self.settings.has(.stripUpgrade) else {
            self.relayAsHTTP(context: context)
            return
        }
        self.buffered.moveReaderIndex(forwardBy: headLength)
        let headers = lines.filter {
            let lower = $0.lowercased()
            return !lower.hasPrefix("proxy-authorization:") && !lower.hasPrefix("proxy-connection:")
        }
        let rewritten = "\(method) \(destination.path) \(version)\r\n" + headers.map { $0 + "\r\n" }.joined() + "\r\n"
        self.join(context: context, host: destination.host, port: destination.port, preface: rewritten, toClient: false,
                  silenceAfterAnswerHead: self.settings.has(.nothingAfterUpgrade))
    }

    /// From the first request on, the connection is relayed as HTTP messages: the bytes read so far go again
    /// through an HTTP decoder.
    private func relayAsHTTP(context: ChannelHandlerContext) {
        let pipeline = context.pipeline.syncOperations
        let bytes = self.buffered
        self.buffered = ByteBuffer()
        do {
            try pipeline.addHandlers([
                HTTPFaultRelay.serverSideHandlers(),
                [HTTPFaultRelay(settings: self.settings)],
            ].flatMap { $0 }, position: .after(self))
            context.fireChannelRead(NIOAny(bytes))
            pipeline.removeHandler(context: context, promise: nil)
        } catch {
            context.close(promise: nil)
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
        let (clientRelay, upstreamRelay) = ByteRelay.pair(cutAfter: self.settings.cutAfterBytes)
        if silenceAfterAnswerHead { upstreamRelay.silenceAfterHead() }
        let latency = self.settings.latency
        let loopBound = NIOLoopBound((self, context, clientRelay, upstreamRelay), eventLoop: context.eventLoop)
        ClientBootstrap(group: context.eventLoop)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let latency { try channel.pipeline.syncOperations.addHandler(DelayedWriteHandler(delay: latency)) }
                }
            }
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

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Idle before the first request ended: a proxy's idle timeout closes the connection.
        if event is IdleStateHandler.IdleStateEvent { context.close(promise: nil) }
        context.fireUserInboundEventTriggered(event)
    }
}
