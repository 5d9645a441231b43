public import NIOCore
import NIOHTTP1

/// Dials the chunked or polling transport: `POST <prefix>/open?t=KIND` gets a connection id from the server,
/// then ``HTTPClientTransportConnection`` runs the downstream GETs and upstream POSTs that name it.
public struct HTTPClientTransport: ClientTransport {
    public let kind: TransportKind
    public let options: TransportOptions

    public init(kind: TransportKind, options: TransportOptions) {
        precondition(kind == .chunked || kind == .polling, "HTTPClientTransport carries chunked or polling")
        self.kind = kind
        self.options = options
    }

    public func connect(to endpoint: ServerEndpoint, on eventLoop: any EventLoop) -> EventLoopFuture<any TransportConnection> {
        let kind = self.kind
        let options = self.options
        let route = HTTPRoute(endpoint: endpoint, options: options)
        let promise = eventLoop.makePromise(of: (any TransportConnection).self)
        let timeout = eventLoop.scheduleTask(in: options.connectTimeout) {
            promise.fail(TransportError.timedOut(kind, phase: "open request", seconds: options.connectTimeout.seconds))
        }
        HTTPClientChannel.dial(route: route, on: eventLoop, timeout: options.connectTimeout)
            .whenComplete { result in
                switch result {
                case .failure(let error):
                    promise.fail(error)
                case .success(let channel):
                    Self.open(kind: kind, route: route, options: options, channel: channel.value, promise: promise)
                }
            }
        promise.futureResult.whenComplete { _ in timeout.cancel() }
        return promise.futureResult
    }

    private static func open(
        kind: TransportKind,
        route: HTTPRoute,
        options: TransportOptions,
        channel: HTTPClientChannel,
        promise: EventLoopPromise<any TransportConnection>
    ) {
        var headers = route.baseHeaders()
        headers.add(name: "Content-Length", value: "0")
        if let placement = options.placement { CulvertRequestField.placement.add(placement, to: &headers) }
        let head = HTTPRequestHead(version: .http1_1, method: .POST, uri: route.requestTarget("open?t=\(kind)"), headers: headers)
        var responseHead: HTTPResponseHead?
        var body = ByteBuffer()
        channel.send(head, body: nil, end: true) { event in
            switch event {
            case .head(let head):
                responseHead = head
            case .body(var part):
                body.writeBuffer(&part)
            case .end:
                guard let head = responseHead else { return }
                if head.status != .ok {
                    channel.close()
                    promise.fail(Self.openError(head, kind: kind, route: route))
                    return
                }
                let id = String(buffer: body).trimmingCharacters()
                guard id.count == 32, id.allSatisfy(\.isHexDigit) else {
                    channel.close()
                    promise.fail(TransportError.handshakeFailed(kind, "the server's answer to open is not a connection id (is it a culvert server?)"))
                    return
                }
                let connection = HTTPClientTransportConnection(
                    id: id, kind: kind, route: route, options: options, eventLoop: channel.channel.eventLoop,
                    firstChannel: channel
                )
                connection.begin()
                promise.assumeIsolated().succeed(connection)
            case .failed(let error):
                promise.fail(TransportError.handshakeFailed(kind, "the connection closed before the server answered open (\(error))\(route.endpoint.usesTLS ? "" : "; a server with TLS needs an https:// URL")"))
            }
        }
    }

    private static func openError(_ head: HTTPResponseHead, kind: TransportKind, route: HTTPRoute) -> TransportError {
        if let proxyError = route.proxyError(for: head, method: "POST") { return proxyError }
        let hint: String
        switch head.status.code {
        case 404: hint = "check the URL path (the server's --path, default /culvert)"
        case 400: hint = "the server does not know this transport (an older culvert?)"
        case 413: hint = "something in the path limits request bodies"
        case 503 where head.headers.contains(name: DrainingRequestFilter.headerName): hint = DrainingRequestFilter.clientHint
        case 502, 503, 504: hint = "a proxy in the path could not reach the culvert server"
        default: hint = "the server or a proxy in the path refused the request"
        }
        return .unexpectedStatus(kind, status: Int(head.status.code), reason: head.status.reasonPhrase, hint: hint)
    }
}

extension String {
    /// Without leading and trailing spaces and line breaks.
    func trimmingCharacters() -> String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\n" || $0 == "\r" || $0 == "\t" }
        return String(self.drop(while: isSpace).reversed().drop(while: isSpace).reversed())
    }
}
