import ArgumentParser
import CulvertTransport
import NIOCore

/// Server flags for the chunked and polling transports.
struct HTTPServerTransportOptions: ParsableArguments {
    @Option(help: "Seconds a polling GET is held when there is nothing to send (keep below proxies' 50-60 s read timeouts).")
    var pollHold: Double = 25

    @Option(help: "Seconds without a request after which a chunked or polling connection is closed and freed.")
    var httpIdleTimeout: Double = 60

    @Option(help: "MiB after which a streaming (chunked) response is ended and the client asks for the next.")
    var streamResponseMib: Int = 32

    @Option(help: "Seconds after which a streaming (chunked) response is ended, before proxies cut long responses.")
    var streamResponseAge: Double = 50

    @Option(help: "KiB in one polling response at most.")
    var pollResponseKib: Int = 1024

    func settings() throws -> HTTPTransportServerSettings {
        guard self.pollHold > 0, self.httpIdleTimeout > 0, self.streamResponseAge > 0 else {
            throw ValidationError("--poll-hold, --http-idle-timeout and --stream-response-age must be positive")
        }
        guard self.streamResponseMib >= 1, self.pollResponseKib >= 16 else {
            throw ValidationError("--stream-response-mib must be at least 1 and --poll-response-kib at least 16")
        }
        return HTTPTransportServerSettings(
            pollHoldTime: .fromSeconds(self.pollHold),
            idleTimeout: .fromSeconds(self.httpIdleTimeout),
            streamResponseLimitBytes: self.streamResponseMib * 1024 * 1024,
            streamResponseMaxAge: .fromSeconds(self.streamResponseAge),
            maximumPollResponseBytes: self.pollResponseKib * 1024
        )
    }
}

/// Client flags for the chunked and polling transports.
struct HTTPClientTransportOptions: ParsableArguments {
    @Option(help: "KiB in one POST at most (polling, and chunked after a fallback to short POSTs); some proxies refuse bodies over 1 MiB.")
    var maxPostKib: Int = 512

    @Option(help: "MiB after which a streaming (chunked) POST is ended and the next begun.")
    var streamRequestMib: Int = 32

    @Option(help: "Seconds after which a streaming (chunked) POST is ended and the next begun.")
    var streamRequestAge: Double = 50

    @Option(help: "Seconds without an acknowledgement of a streaming POST before upstream switches to short POSTs.")
    var upstreamAckTimeout: Double = 3

    /// Which body shapes the chunked and polling transports may use.
    enum BodyShapeChoice: String, ExpressibleByArgument, CaseIterable {
        case auto, binary, text

        /// The shapes to use, in order (one: no fallback).
        var shapes: [HTTPBodyShape] {
            switch self {
            case .auto: HTTPBodyShape.fallbackOrder
            case .binary: [.binary]
            case .text: [.text]
            }
        }
    }

    @Option(help: "Chunked and polling bodies: binary (application/octet-stream), text (base64 in text/plain, for proxies whose content rules refuse binary), or auto: binary, then text, then small text bodies, as the path refuses them.")
    var bodyShape: BodyShapeChoice = .auto

    func settings() throws -> HTTPTransportClientSettings {
        guard self.maxPostKib >= 16, self.streamRequestMib >= 1, self.streamRequestAge > 0, self.upstreamAckTimeout > 0 else {
            throw ValidationError("--max-post-kib must be at least 16, --stream-request-mib at least 1, and the times positive")
        }
        return HTTPTransportClientSettings(
            maximumPostBodyBytes: self.maxPostKib * 1024,
            streamRequestLimitBytes: self.streamRequestMib * 1024 * 1024,
            streamRequestMaxAge: .fromSeconds(self.streamRequestAge),
            upstreamAckTimeout: .fromSeconds(self.upstreamAckTimeout),
            bodyShapes: self.bodyShape.shapes
        )
    }
}

extension TimeAmount {
    /// A time amount from fractional seconds.
    static func fromSeconds(_ seconds: Double) -> TimeAmount {
        .nanoseconds(Int64(seconds * 1e9))
    }
}
