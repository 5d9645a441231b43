import NIOCore

/// Opens the byte path every transport's HTTP runs on: TCP to the first hop (the proxy when there is one); a CONNECT
/// tunnel through the proxy when the transport asks for one or the server is `https` (then the proxy sees only the
/// CONNECT line); and TLS to the server for `https`. The returned channel is ready for the transport's handlers.
enum ServerPathDialer {
    /// `tunnelOpened` is called when the proxy accepted CONNECT (a later silence is then the proxy's doing).
    /// A proxy with credentials that has not yet said what it wants is asked first (``ProxyChallengePreflight``).
    static func open(
        route: HTTPRoute,
        connectTunnel: Bool,
        on eventLoop: any EventLoop,
        timeout: TimeAmount,
        tunnelOpened: (@Sendable () -> Void)? = nil
    ) -> EventLoopFuture<any Channel> {
        let tunnel = connectTunnel || route.endpoint.usesTLS
        if let authenticator = route.proxy?.authenticator, authenticator.needsChallenge {
            return ProxyChallengePreflight.run(route: route, authenticator: authenticator, tunnel: tunnel, on: eventLoop, timeout: timeout)
                .flatMap { Self.openAsked(route: route, connectTunnel: connectTunnel, on: eventLoop, timeout: timeout, tunnelOpened: tunnelOpened) }
        }
        return Self.openAsked(route: route, connectTunnel: connectTunnel, on: eventLoop, timeout: timeout, tunnelOpened: tunnelOpened)
    }

    private static func openAsked(
        route: HTTPRoute,
        connectTunnel: Bool,
        on eventLoop: any EventLoop,
        timeout: TimeAmount,
        tunnelOpened: (@Sendable () -> Void)?
    ) -> EventLoopFuture<any Channel> {
        let tunnelProxy = connectTunnel || route.endpoint.usesTLS ? route.proxy : nil
        let tunnelPromise = eventLoop.makePromise(of: Void.self)
        let handshakePromise = eventLoop.makePromise(of: Void.self)
        /// Adds TLS for `https` (on the channel's loop), or declares the path ready.
        @Sendable func startTLS(_ channel: any Channel) throws {
            guard route.endpoint.usesTLS else {
                handshakePromise.succeed()
                return
            }
            let (tlsHandler, pinCheck) = try route.tls.makeHandler(for: route.endpoint)
            try channel.pipeline.syncOperations.addHandlers([
                tlsHandler,
                TLSHandshakeWaiter(endpoint: "\(route.endpoint.host):\(route.endpoint.port)", pinCheck: pinCheck, promise: handshakePromise),
            ])
        }
        let channelFuture = TransportDialer.connect(
            host: route.dialHost, port: route.dialPort, on: eventLoop, timeout: timeout, sourceAddress: route.sourceAddress
        ) { channel in
            if let proxy = tunnelProxy {
                try channel.pipeline.syncOperations.addHandlers(ProxyConnectHandler.handlers(route: route, proxy: proxy, promise: tunnelPromise))
            } else {
                tunnelPromise.succeed()
                try startTLS(channel)
            }
        }
        .flatMapErrorThrowing { throw route.dialError($0) }
        channelFuture.whenFailure { error in
            tunnelPromise.fail(error)
            handshakePromise.fail(error)
        }
        if tunnelProxy != nil {
            tunnelPromise.futureResult.whenComplete { result in
                switch result {
                case .success:
                    tunnelOpened?()
                    channelFuture.whenSuccess { channel in
                        do { try startTLS(channel) } catch { handshakePromise.fail(error) }
                    }
                case .failure(let error):
                    handshakePromise.fail(error)
                    channelFuture.whenSuccess { $0.close(promise: nil) }
                }
            }
        }
        let ready = handshakePromise.futureResult.flatMap { channelFuture }
        ready.whenFailure { _ in channelFuture.whenSuccess { $0.close(promise: nil) } }
        return ready
    }
}
