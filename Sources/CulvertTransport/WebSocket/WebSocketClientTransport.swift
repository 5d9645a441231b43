import NIOCore
import NIOHTTP1
import NIOPosix

/// Dials the server and upgrades the connection to WebSocket (RFC 6455) at `<prefix>/ws`.
public struct WebSocketClientTransport: ClientTransport {
    public let kind = TransportKind.websocket
    public let options: TransportOptions

    public init(options: TransportOptions) {
        self.options = options
    }

    public func connect(to endpoint: ServerEndpoint, on eventLoop: any EventLoop) -> EventLoopFuture<any TransportConnection> {
        guard !endpoint.usesTLS else {
            return eventLoop.makeFailedFuture(
                TransportError.invalidURL(endpoint.description, reason: "TLS (https/wss) is not available in this build yet")
            )
        }
        let upgradePromise = eventLoop.makePromise(of: (any TransportConnection).self)
        let options = self.options
        let timeout = eventLoop.scheduleTask(in: options.connectTimeout) {
            upgradePromise.fail(
                TransportError.timedOut(.websocket, phase: "WebSocket upgrade", seconds: options.connectTimeout.seconds)
            )
        }
        let channelFuture = TransportDialer.connect(
            host: endpoint.host,
            port: endpoint.port,
            on: eventLoop,
            timeout: options.connectTimeout
        ) { channel in
            try channel.pipeline.syncOperations.addHandlers([
                HTTPRequestEncoder(),
                ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .forwardBytes)),
                WebSocketClientUpgradeHandler(endpoint: endpoint, options: options, upgradePromise: upgradePromise),
            ])
        }
        channelFuture.whenFailure { error in upgradePromise.fail(error) }
        upgradePromise.futureResult.whenComplete { result in
            timeout.cancel()
            if case .failure = result {
                // A timeout fails the promise from outside the handler: the half-open channel must go too.
                channelFuture.whenSuccess { $0.close(promise: nil) }
            }
        }
        return upgradePromise.futureResult
    }
}
