import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1

/// Dials the server (directly, through a forward proxy with an absolute-form request, or through a CONNECT
/// tunnel) and runs an HTTP upgrade on the connection, within the connect timeout.
enum HTTPUpgradeDialer {
    static func connect(
        kind: TransportKind,
        route: HTTPRoute,
        options: TransportOptions,
        throughConnectTunnel: Bool,
        request: HTTPRequestHead,
        on eventLoop: any EventLoop,
        validate: @escaping @Sendable (HTTPResponseHead) -> String?,
        install: @escaping @Sendable (ChannelPipeline.SynchronousOperations, any Channel) throws -> any TransportConnection
    ) -> EventLoopFuture<any TransportConnection> {
        guard !route.endpoint.usesTLS else {
            return eventLoop.makeFailedFuture(
                TransportError.invalidURL(route.endpoint.description, reason: "TLS (https/wss) is not available in this build yet")
            )
        }
        let upgradePromise = eventLoop.makePromise(of: (any TransportConnection).self)
        let tunnelPromise = eventLoop.makePromise(of: Void.self)
        let tunnelOpen = NIOLockedValueBox(false)
        let tunnelProxy = throughConnectTunnel ? route.proxy : nil
        let timeout = eventLoop.scheduleTask(in: options.connectTimeout) {
            let seconds = options.connectTimeout.seconds
            if let proxy = tunnelProxy, tunnelOpen.withLockedValue({ $0 }) {
                upgradePromise.fail(TransportError.proxyRelaysNothing(proxy: proxy.description, seconds: seconds))
            } else {
                upgradePromise.fail(TransportError.timedOut(kind, phase: "\(kind) upgrade", seconds: seconds))
            }
        }
        @Sendable func addUpgradeHandlers(_ channel: any Channel) throws {
            try channel.pipeline.syncOperations.addHandlers([
                HTTPRequestEncoder(),
                ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .forwardBytes)),
                HTTPUpgradeClientHandler(
                    kind: kind, route: route, request: request, upgradePromise: upgradePromise,
                    validate: validate, install: install
                ),
            ])
        }
        let channelFuture = TransportDialer.connect(
            host: route.dialHost,
            port: route.dialPort,
            on: eventLoop,
            timeout: options.connectTimeout
        ) { channel in
            if let proxy = tunnelProxy {
                try channel.pipeline.syncOperations.addHandlers(
                    ProxyConnectHandler.handlers(route: route, proxy: proxy, promise: tunnelPromise)
                )
            } else {
                try addUpgradeHandlers(channel)
            }
        }
        channelFuture.whenFailure { error in
            upgradePromise.fail(route.dialError(error))
            tunnelPromise.fail(error)
        }
        if tunnelProxy != nil {
            tunnelPromise.futureResult.whenComplete { result in
                switch result {
                case .success:
                    tunnelOpen.withLockedValue { $0 = true }
                    channelFuture.whenSuccess { channel in
                        do { try addUpgradeHandlers(channel) } catch { upgradePromise.fail(error) }
                    }
                case .failure(let error):
                    upgradePromise.fail(error)
                }
            }
        } else {
            tunnelPromise.succeed()
        }
        upgradePromise.futureResult.whenComplete { result in
            timeout.cancel()
            if case .failure = result {
                // A timeout fails the promise from outside the handlers: the half-open channel must go too.
                channelFuture.whenSuccess { $0.close(promise: nil) }
            }
        }
        return upgradePromise.futureResult
    }
}
