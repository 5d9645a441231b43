import NIOCore
import NIOSSL
import NIOTLS

/// Completes a promise when the TLS handshake in front of it completes, or fails it with a clear reason when the
/// handshake fails or the connection closes first; then removes itself.
final class TLSHandshakeWaiter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private let endpoint: String
    private let pinCheck: PinnedKeyCheck?
    private let promise: EventLoopPromise<Void>

    init(endpoint: String, pinCheck: PinnedKeyCheck? = nil, promise: EventLoopPromise<Void>) {
        self.endpoint = endpoint
        self.pinCheck = pinCheck
        self.promise = promise
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event {
            self.promise.succeed()
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let reason = self.pinCheck?.mismatchDescription ?? Self.describe(error)
        self.promise.fail(TransportError.tlsFailed(endpoint: self.endpoint, reason: reason))
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.promise.fail(TransportError.tlsFailed(endpoint: self.endpoint, reason: "the connection closed during the handshake (is the server serving TLS?)"))
        context.fireChannelInactive()
    }

    private static func describe(_ error: any Error) -> String {
        let text = "\(error)"
        if text.contains("CERTIFICATE_VERIFY_FAILED") || text.contains("certificate verify failed") {
            return "the server's certificate is not trusted (certificate verify failed); use --tls-ca for a private CA, --tls-pin for a self-signed server"
        }
        if text.contains("WRONG_VERSION_NUMBER") || text.contains("wrong version number") {
            return "the server does not speak TLS there (wrong version number); use http:// for a server without TLS"
        }
        if let extra = error as? NIOSSLExtraError, extra == .failedToValidateHostname {
            return "the certificate is not for this name (\(text)); check the URL's host or --sni"
        }
        return text
    }
}
