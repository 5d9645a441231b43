import NIOConcurrencyHelpers
public import NIOCore
import NIOPosix

/// A TCP relay on loopback that can cut every connection through it at a moment of the caller's choosing, and
/// refuse new ones for a while: the dropped connections, NAT timeouts and network changes that session
/// resumption must survive, on demand.
public final class CuttingRelay: Sendable {
    private let channel: any Channel
    private let state: NIOLockedValueBox<State>

    private struct State {
        var connections: [ObjectIdentifier: any Channel] = [:]
        var relays: [ObjectIdentifier: NIOLoopBound<(ByteRelay, ByteRelay)>] = [:]
        var refusing = false
        var cuts = 0
    }

    public var port: Int { self.channel.localAddress!.port! }
    /// Connections cut so far.
    public var cuts: Int { self.state.withLockedValue { $0.cuts } }

    private init(channel: any Channel, state: NIOLockedValueBox<State>) {
        self.channel = channel
        self.state = state
    }

    /// Relays connections to 127.0.0.1:`targetPort`, listening on 127.0.0.1:`port` (0: a free port).
    ///
    /// With `cutEachConnectionAfter`, the relay also cuts a connection by itself once it has passed a number of
    /// bytes from upstream drawn from that range, up to `automaticCuts` times: cuts that land mid-transfer at
    /// any speed, so a test needs only a few MiB to see many of them.
    public static func start(
        targetPort: Int,
        port: Int = 0,
        cutEachConnectionAfter budgets: ClosedRange<Int>? = nil,
        automaticCuts: Int = 0,
        group: any EventLoopGroup
    ) async throws -> CuttingRelay {
        let state = NIOLockedValueBox(State())
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.autoRead, value: false)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { client in
                let refusing = state.withLockedValue { $0.refusing }
                guard !refusing else { return client.eventLoop.makeFailedFuture(ChannelError.ioOnClosedChannel) }
                // Both connections live on the accepted one's loop, where the relay handlers are created and used.
                let budget: Int? = state.withLockedValue { state in
                    guard let budgets, state.cuts < automaticCuts else { return nil }
                    return Int.random(in: budgets)
                }
                let pair = ByteRelay.pair(cutAfter: budget) {
                    state.withLockedValue { $0.cuts += 1 }
                }
                let relays = NIOLoopBound(pair, eventLoop: client.eventLoop)
                return ClientBootstrap(group: client.eventLoop)
                    .channelOption(.tcpOption(.tcp_nodelay), value: 1)
                    .channelOption(.allowRemoteHalfClosure, value: true)
                    .channelInitializer { upstream in
                        upstream.eventLoop.makeCompletedFuture { try upstream.pipeline.syncOperations.addHandler(relays.value.1) }
                    }
                    .connect(host: "127.0.0.1", port: targetPort)
                    .flatMapThrowing { upstream in
                        try client.pipeline.syncOperations.addHandler(relays.value.0)
                        state.withLockedValue { state in
                            state.connections[ObjectIdentifier(client)] = client
                            state.connections[ObjectIdentifier(upstream)] = upstream
                            state.relays[ObjectIdentifier(client)] = relays
                        }
                        client.closeFuture.whenComplete { _ in
                            state.withLockedValue {
                                _ = $0.connections.removeValue(forKey: ObjectIdentifier(client))
                                _ = $0.relays.removeValue(forKey: ObjectIdentifier(client))
                            }
                        }
                        upstream.closeFuture.whenComplete { _ in
                            state.withLockedValue { _ = $0.connections.removeValue(forKey: ObjectIdentifier(upstream)) }
                        }
                        client.setOption(.autoRead, value: true).whenComplete { _ in }
                    }
            }
            .bind(host: "127.0.0.1", port: port)
            .get()
        return CuttingRelay(channel: channel, state: state)
    }

    /// Closes every connection through the relay now (both sides see the connection drop).
    public func cutAll() {
        let connections = self.state.withLockedValue { state -> [any Channel] in
            state.cuts += 1
            return Array(state.connections.values)
        }
        for connection in connections { connection.close(promise: nil) }
    }

    /// Stops passing bytes on every connection through the relay now, without closing any: what a lost NAT
    /// mapping or a dead path looks like, which only keepalive can notice. New connections are not affected.
    public func blackHoleAll() {
        let relays = self.state.withLockedValue { Array($0.relays.values) }
        for pair in relays {
            pair.eventLoop.execute {
                pair.value.0.blackHole()
                pair.value.1.blackHole()
            }
        }
    }

    /// While true, new connections are closed as soon as they are accepted.
    public func setRefusing(_ refusing: Bool) {
        self.state.withLockedValue { $0.refusing = refusing }
    }

    public func close() async throws {
        self.cutAll()
        try await self.channel.close()
    }
}
