import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1

/// Dials the server (directly, through a forward proxy with an absolute-form request, or through a CONNECT
/// tunnel; inside TLS for `https`) and runs an HTTP upgrade on the connection, within the connect timeout.
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
        let upgradePromise = eventLoop.makePromise(of: (any TransportConnection).self)
        let tunnelOpen = NIOLockedValueBox(false)
        let tunnelProxy = throughConnectTunnel || route.endpoint.usesTLS ? route.proxy : nil
        let timeout = eventLoop.scheduleTask(in: options.connectTimeout) {
            let seconds = options.connectTimeout.seconds
            if let proxy = tunnelProxy, tunnelOpen.withLockedValue({ $0 }) {
                upgradePromise.fail(TransportError.proxyRelaysNothing(proxy: proxy.description, seconds: seconds))
            } else {
                upgradePromise.fail(TransportError.timedOut(kind, phase: "\(kind) upgrade", seconds: seconds))
            }
        }
        let channelFuture = ServerPathDialer.open(
            route: route, connectTunnel: throughConnectTunnel, on: eventLoop, timeout: options.connectTimeout,
            tunnelOpened: { tunnelOpen.withLockedValue { $0 = true } }
        )
        channelFuture.whenComplete { result in
            switch result {
            case .failure(let error):
                upgradePromise.fail(error)
            case .success(let channel):
                do {
                    // (Through a CONNECT tunnel the request goes to the server: the proxy authenticated the CONNECT.)
                    let authentication = throughConnectTunnel ? [] : route.proxyAuthentication()
                    try channel.pipeline.syncOperations.addHandlers(
                        [HTTPRequestEncoder(), ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .forwardBytes))]
                            + authentication
                            + [
                                HTTPUpgradeClientHandler(
                                    kind: kind, route: route, request: request, upgradePromise: upgradePromise,
                                    validate: validate, install: install
                                )
                            ]
                    )
                } catch {
                    upgradePromise.fail(error)
                }
            }
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
