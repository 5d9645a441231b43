import Culvert
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus

/// `--metrics-listen HOST:PORT`: serves `GET /metrics` in Prometheus's text format, from a registry of its own.
///
/// A few lines of NIOHTTP1 rather than an HTTP framework: one read-only path, and culvert already depends on
/// SwiftNIO's HTTP/1 pipeline for its transports.
struct MetricsEndpoint {
    let registry: PrometheusCollectorRegistry
    let channel: any Channel

    /// The metrics that sessions and servers report into this endpoint's registry.
    let metrics: TunnelMetrics

    /// Binds `host:port`; each scrape first runs `collect` (which brings byte counts and memory up to date).
    static func start(
        host: String, port: Int, registry: PrometheusCollectorRegistry, collect: @escaping @Sendable () async -> Void,
        group: any EventLoopGroup
    ) async throws -> MetricsEndpoint {
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(MetricsRequestHandler(registry: registry, collect: collect))
                }
            }
            .bind(host: host, port: port)
            .get()
        return MetricsEndpoint(
            registry: registry, channel: channel, metrics: TunnelMetrics(factory: PrometheusMetricsFactory(registry: registry))
        )
    }
}

/// Answers `GET /metrics` (and `HEAD`) with the registry's text; anything else gets 404 or 405.
private final class MetricsRequestHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let registry: PrometheusCollectorRegistry
    private let collect: @Sendable () async -> Void
    private var request: HTTPRequestHead?

    init(registry: PrometheusCollectorRegistry, collect: @escaping @Sendable () async -> Void) {
        self.registry = registry
        self.collect = collect
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head): self.request = head
        case .body: break
        case .end:
            guard let head = self.request else { return }
            self.request = nil
            let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
            guard path == "/metrics" else { return self.respond(context, head, status: .notFound, body: "not found: the metrics are at /metrics\n") }
            guard head.method == .GET || head.method == .HEAD else {
                return self.respond(context, head, status: .methodNotAllowed, body: "use GET\n")
            }
            let promise = context.eventLoop.makePromise(of: Void.self)
            promise.completeWithTask { [collect] in await collect() }
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            promise.futureResult.whenComplete { _ in
                let (handler, context) = bound.value
                var text: [UInt8] = []
                handler.registry.emit(into: &text)
                handler.respond(context, head, status: .ok, body: String(decoding: text, as: UTF8.self), contentType: "text/plain; version=0.0.4; charset=utf-8")
            }
        }
    }

    private func respond(
        _ context: ChannelHandlerContext, _ head: HTTPRequestHead, status: HTTPResponseStatus, body: String,
        contentType: String = "text/plain; charset=utf-8"
    ) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: "\(body.utf8.count)")
        let keepAlive = head.isKeepAlive
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        if head.method != .HEAD {
            context.write(self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
        }
        let written = context.writeAndFlush(self.wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            written.whenComplete { _ in channel.close(promise: nil) }
        }
    }
}
