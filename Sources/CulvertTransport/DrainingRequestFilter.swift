import NIOCore
import NIOHTTP1
import Synchronization

/// While the server drains, answers every request that would start something new — a WebSocket or CONNECT upgrade,
/// a chunked or polling `open`, a negotiation probe, the endpoint page a balancer's health check reads — with 503
/// and `Connection: close`, and lets the requests of the chunked and polling connections it already has through, so
/// that their sessions can finish their streams; so does a request that resumes a session
/// (``TransportOptions/resumptionHeaderName``: the server refuses its HELLO if it starts a new one instead). A balancer that retries on 503 sends the client elsewhere at once.
final class DrainingRequestFilter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    /// The body a refused request gets.
    static let message = "this server is draining (shutting down) and takes no new sessions; connect again, to another server"
    /// The header that tells a client the 503 comes from a draining culvert server, not from a proxy in the path.
    static let headerName = "Culvert-Draining"
    /// The hint a client gives with such a 503.
    static let clientHint = "the server is draining (shutting down) and takes no new sessions; trying again (behind a load balancer, another server takes it)"

    /// Whether the server drains, and which paths start something new; one per listener, shared by its connections.
    final class Gate: Sendable {
        private let draining = Atomic<Bool>(false)
        let newSessionPaths: Set<String>

        init(pathPrefix: String) {
            self.newSessionPaths = [
                pathPrefix, pathPrefix + "/", pathPrefix + "/ws", pathPrefix + "/raw", pathPrefix + "/open", pathPrefix + "/probe",
            ]
        }

        /// Set once, when the server starts draining; read for every request head, so it is an atomic, not a lock.
        var isDraining: Bool { self.draining.load(ordering: .relaxed) }

        func startDraining() { self.draining.store(true, ordering: .relaxed) }
    }

    private let gate: Gate
    /// The refused request, until its end (its body is dropped).
    private var refused: HTTPRequestHead?

    init(gate: Gate) {
        self.gate = gate
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = self.unwrapInboundIn(data)
        switch part {
        case .head(let head):
            if self.gate.isDraining, self.gate.newSessionPaths.contains(head.pathWithoutQuery),
                CulvertRequestField.resume.value(in: head.headers) == nil
            {
                self.refused = head
                return
            }
        case .body:
            if self.refused != nil { return }
        case .end:
            if let head = self.refused {
                self.refused = nil
                HTTPTransportRequestHandler.writeError(
                    channel: context.channel, version: head.version, status: .serviceUnavailable, Self.message,
                    extra: [("Retry-After", "1"), (Self.headerName, "1")], closeConnection: true
                )
                return
            }
        }
        context.fireChannelRead(data)
    }
}
