import NIOConcurrencyHelpers
import NIOCore

/// What request handlers on any loop hold of a chunked or polling connection: its id and loop, the admission of
/// its requests and the count of uploads in progress (both locked: handlers on every loop ask them), and the
/// connection itself, boxed to its loop, where ``onLoop(_:)`` runs what they ask of it.
final class HTTPServerConnectionHandle: Sendable {
    /// How a request on this connection is let in.
    enum Verdict: Equatable {
        /// Unsigned: taken with the limits for strangers; once the session is authenticated such a request gets
        /// nothing that came after the handshake (it may be the client's own, sent before it had the key).
        case unsigned
        /// Signed with the session's key.
        case signed
        /// Refused: the request carries a signature that does not verify, or one used before.
        case refused(String)
    }

    /// The signer and the counters seen, once the session is authenticated; shared by the connection (which sets
    /// the signer, on its loop) and its handle (whose request handlers check signatures, on theirs).
    final class Admission: Sendable {
        private struct Verifier {
            let signer: HTTPRequestSigner
            var window = RequestCounterWindow()
        }

        private let verifier = NIOLockedValueBox<Verifier?>(nil)

        /// From now on a signature must verify with `signer`.
        func requireSignatures(by signer: HTTPRequestSigner) {
            self.verifier.withLockedValue { $0 = Verifier(signer: signer) }
        }

        /// How a request may go on: a signature must verify (with a counter not seen before) once the session is
        /// authenticated; an unsigned request goes on as a stranger's.
        func admit(method: String, endpoint: String, offset: UInt64, signature: String?) -> Verdict {
            self.verifier.withLockedValue { verifier in
                guard let signature else { return .unsigned }
                guard var current = verifier else { return .unsigned }
                guard let counter = current.signer.verify(signature, method: method, endpoint: endpoint, offset: offset) else {
                    return .refused("the request's signature does not verify with the session's key")
                }
                guard current.window.accept(counter) else { return .refused("the request's signature was used before") }
                verifier = current
                return .signed
            }
        }
    }

    let id: String
    let eventLoop: any EventLoop
    private let connection: NIOLoopBound<HTTPServerTransportConnection>
    private let admission: Admission
    /// Upstream POSTs being received now, counted by the request handlers.
    let pendingUploads = NIOLockedValueBox(0)

    /// A handle on `connection`; made on its loop.
    init(_ connection: HTTPServerTransportConnection) {
        self.id = connection.id
        self.eventLoop = connection.eventLoop
        self.connection = NIOLoopBound(connection, eventLoop: connection.eventLoop)
        self.admission = connection.admission
    }

    /// See ``Admission/admit(method:endpoint:offset:signature:)``.
    func admit(method: String, endpoint: String, offset: UInt64, signature: String?) -> Verdict {
        self.admission.admit(method: method, endpoint: endpoint, offset: offset, signature: signature)
    }

    /// Runs `body` with the connection on its loop, after the current task there.
    func onLoop(_ body: @escaping @Sendable (HTTPServerTransportConnection) -> Void) {
        let connection = self.connection
        self.eventLoop.execute { body(connection.value) }
    }
}
