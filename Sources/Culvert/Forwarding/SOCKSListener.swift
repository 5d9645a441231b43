import Crypto
import CulvertTransport
import CulvertCore
import Logging
import NIOCore
import NIOSOCKS

/// The username and password a SOCKS5 client must give (RFC 1929), from `--socks-user USER:PASS`.
public struct SOCKSCredentials: Hashable, Sendable {
    public var username: String
    public var password: String

    public init(username: String, password: String) {
        self.username = username
        self.password = password
    }

    /// Parses `USER:PASS` (the password may contain colons; neither may be empty or longer than 255 bytes).
    public init(parsing text: String) throws(ForwardingError) {
        guard let colon = text.firstIndex(of: ":") else {
            throw .invalidSOCKSUser("expected USER:PASS")
        }
        let username = String(text[..<colon])
        let password = String(text[text.index(after: colon)...])
        guard !username.isEmpty, !password.isEmpty else { throw .invalidSOCKSUser("USER and PASS must not be empty") }
        guard username.utf8.count <= 255, password.utf8.count <= 255 else {
            throw .invalidSOCKSUser("USER and PASS are at most 255 bytes each (RFC 1929)")
        }
        self.init(username: username, password: password)
    }
}

extension LocalListener {
    /// The `-D [BIND:]PORT` listener: a SOCKS5 server (RFC 1928, CONNECT only). Each connection names its target,
    /// which becomes a stream to it; names are resolved on the server's side (as `socks5h` expects), and the reply
    /// carries the real outcome: success only after the server opened the target, "not allowed by ruleset" for its
    /// allowlist, "connection refused" or "host unreachable" for the target's own failure. With `credentials`, clients
    /// must authenticate with them (RFC 1929); without, no authentication is offered.
    public static func socks(_ address: ListenAddress, credentials: SOCKSCredentials? = nil) -> LocalListener {
        LocalListener(
            flag: "-D", text: address.description, address: address,
            announcement: { "SOCKS5 proxy on \($0)\(credentials == nil ? "" : " (username and password required)")" }
        ) { channel, tunnel, logger in
            let handshake = SOCKSServerHandshakeHandler()
            try channel.pipeline.syncOperations.addHandler(handshake)
            try channel.pipeline.syncOperations.addHandler(
                SOCKSConnectionHandler(handshake: handshake, credentials: credentials, tunnel: tunnel, logger: logger)
            )
        }
    }
}

/// Answers one SOCKS5 client on top of NIOSOCKS's handshake parser: chooses the authentication method, checks the
/// RFC 1929 username and password, hands the CONNECT target to the tunnel and replies once the stream opened or
/// failed. Then it takes itself and the parser out of the pipeline, so the stream's bytes flow untouched.
final class SOCKSConnectionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ClientMessage
    typealias OutboundOut = ServerMessage

    /// How long a client has to finish the handshake (greeting, authentication, request).
    static let handshakeTimeout: TimeAmount = .seconds(10)

    private enum Phase {
        case greeting
        case authenticating(received: ByteBuffer)
        case request
        case opening
        case done
    }

    private let handshake: SOCKSServerHandshakeHandler
    private let credentials: SOCKSCredentials?
    private let tunnel: any StreamOpening
    private let logger: Logger
    private var phase = Phase.greeting
    private var timeout: Scheduled<Void>?
    /// The client half-closed after its request, before the stream opened: the stream hears it after the bytes
    /// the parser still holds.
    private var inputClosedWhileOpening = false

    init(handshake: SOCKSServerHandshakeHandler, credentials: SOCKSCredentials?, tunnel: any StreamOpening, logger: Logger) {
        self.handshake = handshake
        self.credentials = credentials
        self.tunnel = tunnel
        self.logger = logger
    }

    private var waitsForClient: Bool {
        switch self.phase {
        case .greeting, .authenticating, .request: true
        case .opening, .done: false
        }
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let peer = context.channel.remoteAddress.map(\.displayText) ?? "a client"
        let logger = self.logger
        let channel = context.channel
        self.timeout = context.eventLoop.scheduleTask(in: Self.handshakeTimeout) {
            logger.info("SOCKS client \(peer) did not finish its handshake within \(Self.handshakeTimeout.roundedText); closing")
            channel.close(promise: nil)
        }
        // Auto-read is off (the stream reads only with credit): ask for the handshake's bytes. A read asked for
        // before the channel is registered is lost, so it is asked again once it is active.
        if context.channel.isActive { context.read() }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.timeout?.cancel()
    }

    /// Leaves the pipeline before the channel's teardown removes the parser: the parser then hands what it still
    /// holds, as bytes, to the handler after it, and this one takes only parsed messages.
    func channelInactive(context: ChannelHandlerContext) {
        self.phase = .done
        context.fireChannelInactive()
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    /// NIOSOCKS's parser hands on one message per read: a client that sent its next message in the same packet
    /// (greeting and request together) would wait for a read that never comes. An empty read makes it look at what
    /// it holds.
    private func parseWhatIsHeld(context: ChannelHandlerContext) {
        context.pipeline.syncOperations.fireChannelRead(NIOAny(context.channel.allocator.buffer(capacity: 0)))
    }

    func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        context.read()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if self.waitsForClient { context.read() }
        context.fireChannelReadComplete()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch (self.unwrapInboundIn(data), self.phase) {
        case (.greeting(let greeting), .greeting):
            self.greeted(greeting, context: context)
        case (.authenticationData(var bytes), .authenticating(var received)):
            received.writeBuffer(&bytes)
            self.authenticate(received, context: context)
        case (.request(let request), .request):
            self.requested(request, context: context)
        default:
            self.logger.debug("SOCKS client sent a message out of order; closing")
            context.close(promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case ChannelEvent.inputClosed = event else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        switch self.phase {
        case .greeting, .authenticating, .request:
            self.logger.debug("SOCKS client closed its side before its request; closing")
            self.phase = .done
            context.close(promise: nil)
        case .opening:
            self.inputClosedWhileOpening = true
        case .done:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // NIOSOCKS's parser refused the bytes: this is not a SOCKS5 client (a SOCKS4 or HTTP one, say).
        self.logger.info("closing a connection to the SOCKS5 proxy that does not speak SOCKS5: \(error)")
        self.phase = .done
        context.close(promise: nil)
    }

    private func greeted(_ greeting: ClientGreeting, context: ChannelHandlerContext) {
        let wanted: AuthenticationMethod = self.credentials == nil ? .noneRequired : .usernamePassword
        guard greeting.methods.contains(wanted) else {
            self.logger.info(
                self.credentials == nil
                    ? "SOCKS client offered no method without authentication; closing"
                    : "SOCKS client did not offer username and password authentication, which this proxy requires (--socks-user); closing"
            )
            self.phase = .done
            context.writeAndFlush(self.wrapOutboundOut(.selectedAuthenticationMethod(.init(method: .noneAcceptable))))
                .assumeIsolated().whenComplete { _ in context.close(promise: nil) }
            return
        }
        self.phase = wanted == .noneRequired ? .request : .authenticating(received: context.channel.allocator.buffer(capacity: 64))
        context.writeAndFlush(self.wrapOutboundOut(.selectedAuthenticationMethod(.init(method: wanted))), promise: nil)
        self.parseWhatIsHeld(context: context)
    }

    /// RFC 1929: VER(1) ULEN(1) UNAME PLEN(1) PASSWD, answered with VER(1) STATUS(1), 0 for success.
    private func authenticate(_ received: ByteBuffer, context: ChannelHandlerContext) {
        var reader = received
        guard let version: UInt8 = reader.readInteger(), let userLength: UInt8 = reader.readInteger(),
            let user = reader.readBytes(length: Int(userLength)), let passwordLength: UInt8 = reader.readInteger(),
            let password = reader.readBytes(length: Int(passwordLength))
        else {
            self.phase = .authenticating(received: received)
            return
        }
        guard version == 1, reader.readableBytes == 0, let credentials = self.credentials else {
            self.logger.info("SOCKS client sent a malformed username/password request; closing")
            self.phase = .done
            context.close(promise: nil)
            return
        }
        // Compared as digests, so that the time taken says nothing about how much of the secret matched.
        let matches = SHA256.hash(data: user) == SHA256.hash(data: Array(credentials.username.utf8))
            && SHA256.hash(data: password) == SHA256.hash(data: Array(credentials.password.utf8))
        var reply = context.channel.allocator.buffer(capacity: 2)
        reply.writeBytes([1, matches ? 0 : 1])
        guard matches else {
            self.logger.warning(
                "SOCKS client \(context.channel.remoteAddress.map(\.displayText) ?? "") gave a wrong username or password; closing"
            )
            self.phase = .done
            context.writeAndFlush(self.wrapOutboundOut(.authenticationData(reply, complete: false)))
                .assumeIsolated().whenComplete { _ in context.close(promise: nil) }
            return
        }
        self.phase = .request
        context.writeAndFlush(self.wrapOutboundOut(.authenticationData(reply, complete: true)), promise: nil)
        self.parseWhatIsHeld(context: context)
    }

    private func requested(_ request: SOCKSRequest, context: ChannelHandlerContext) {
        guard request.command == .connect else {
            self.logger.info("SOCKS client asked for command \(request.command.value) (only CONNECT is supported); refusing")
            self.reply(.commandUnsupported, context: context)
            return
        }
        let target: TargetAddress
        switch request.addressType {
        case .domain(let host, let port):
            target = TargetAddress(host: host, port: port)
        case .address(let address):
            guard let host = address.ipAddress, let port = address.port else {
                self.reply(.addressUnsupported, context: context)
                return
            }
            target = TargetAddress(host: host, port: port)
        }
        self.phase = .opening
        self.timeout?.cancel()
        let channel = context.channel
        self.tunnel.carry(channel, to: target) { [self] result in
            switch result {
            case .opened:
                self.opened(context: context)
            case .refused(let reason, let message):
                self.logger.info("SOCKS CONNECT to \(target) failed: \(message)")
                self.reply(Self.reply(for: reason), context: context)
            case .unavailable(let reason):
                self.logger.info("SOCKS CONNECT to \(target) not carried: \(reason)")
                self.reply(.serverFailure, context: context)
            }
        }
    }

    /// The stream is open: say so, then leave the pipeline (with the parser, which hands on anything the client
    /// sent after its request) so that the stream's bytes pass untouched.
    private func opened(context: ChannelHandlerContext) {
        let bound: SOCKSAddress = context.channel.localAddress.map { .address($0) } ?? .domain("0.0.0.0", port: 0)
        self.phase = .done
        context.writeAndFlush(self.wrapOutboundOut(.response(SOCKSResponse(reply: .succeeded, boundAddress: bound))), promise: nil)
        let pipeline = context.pipeline.syncOperations
        pipeline.removeHandler(context: context, promise: nil)
        pipeline.removeHandler(self.handshake, promise: nil)
        // What the parser handed on (a client's bytes sent before the reply) goes out with the stream's next flush,
        // and a half-close that came meanwhile after it.
        pipeline.fireChannelReadComplete()
        if self.inputClosedWhileOpening { pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed) }
    }

    /// Answers the request with a failure and closes once the answer is out.
    private func reply(_ reply: SOCKSServerReply, context: ChannelHandlerContext) {
        self.phase = .done
        guard context.channel.isActive else { return }
        let response = SOCKSResponse(reply: reply, boundAddress: .address(try! SocketAddress(ipAddress: "0.0.0.0", port: 0)))
        context.writeAndFlush(self.wrapOutboundOut(.response(response)))
            .assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    /// The SOCKS5 reply code for an OPEN_FAIL reason.
    static func reply(for reason: OpenFailReason) -> SOCKSServerReply {
        switch reason {
        case .notAllowed: .notAllowed
        case .connectionRefused: .refused
        case .unresolvable: .hostUnreachable
        case .timedOut: .ttlExpired
        default: .serverFailure
        }
    }
}
