import NIOCore
import NIOHTTP1

/// What the server's upgraders (WebSocket, `culvert` for CONNECT) share: the 101's headers and the switch from the
/// HTTP request handler to the transport's handlers.
enum HTTPServerUpgrade {
    /// `initial` plus `Upgrade: protocolName`, `Connection: upgrade`, `Cache-Control: no-store` and `Server`.
    static func responseHeaders(_ initial: HTTPHeaders, protocolName: String) -> HTTPHeaders {
        var headers = initial
        headers.replaceOrAdd(name: "Upgrade", value: protocolName)
        headers.replaceOrAdd(name: "Connection", value: "upgrade")
        headers.add(name: "Cache-Control", value: "no-store")
        headers.add(name: "Server", value: "culvert/\(CulvertVersion.string)")
        return headers
    }

    /// Whether `head` says a body follows it: any `Transfer-Encoding`, or a `Content-Length` other than 0. An upgrade
    /// request has no body, and such a head is not upgraded: NIO's upgrade handler, once it accepts a head, holds
    /// itself (and the connection's whole pipeline) until the request's end, which a body that never ends or fails to
    /// parse never brings, so every such connection would leak.
    static func announcesBody(_ head: HTTPRequestHead) -> Bool {
        head.headers.contains(name: "Transfer-Encoding") || head.headers["Content-Length"].contains { $0 != "0" }
    }

    /// Bytes an upgraded connection may send before its session has authenticated the peer: a handshake is a few
    /// hundred bytes; without a bound, a stranger could make the server buffer a 16 MiB WebSocket frame per
    /// connection.
    static let preAuthenticationBudget = 16 * 1024

    /// Removes the request handler and adds a ``PreAuthenticationLimitHandler``, `handlers` and a
    /// ``ChannelTransportConnection`` of `kind`, which it returns.
    static func installTransport(
        kind: TransportKind,
        context: ChannelHandlerContext,
        handlers: [any ChannelHandler] = []
    ) throws -> ChannelTransportConnection {
        let pipeline = context.pipeline.syncOperations
        if let requestHandler = try? pipeline.handler(type: HTTPTransportRequestHandler.self) {
            pipeline.removeHandler(requestHandler, promise: nil)
        }
        let connection = ChannelTransportConnection(kind: kind, channel: context.channel)
        try pipeline.addHandlers([PreAuthenticationLimitHandler(budget: Self.preAuthenticationBudget)] + handlers + [connection])
        return connection
    }
}
