public import NIOCore
import NIOHTTP1

/// Asks the server for a streaming response of small chunks sent at a steady pace (`GET <prefix>/probe`) and judges
/// from their arrival times whether the path delivers a streaming response as it is sent, holds it until its end
/// (a buffering proxy), or passes it on in bursts. The chunked transport's downstream needs the first.
public enum StreamingDeliveryProbe {
    /// How the probe's chunks arrived.
    public enum Verdict: Sendable, Equatable {
        /// Spread out about as they were sent.
        case asSent
        /// All at once, at the end: the response was held until it ended.
        case heldUntilEnd
        /// In bursts: `together` of the `gaps` gaps between chunks were far shorter than the sending interval.
        case bursts(together: Int, gaps: Int)
    }

    public struct Outcome: Sendable {
        public var verdict: Verdict
        /// Time from sending the request to its response head: about one round trip (two with the connect).
        public var responseHeadTime: TimeAmount
    }

    /// Chunks and interval the probe asks for: 8 chunks, 50 ms apart, takes 350 ms.
    public static let defaultChunks = 8
    public static let defaultInterval = TimeAmount.milliseconds(50)

    /// Judges arrival times (seconds, one per chunk, in order) of chunks sent `interval` seconds apart. A gap under a
    /// third of the interval means two chunks arrived together; chunks arriving together form one delivery. All in
    /// one delivery: the response was held until its end. Fewer deliveries than half the chunks: bursts (a proxy
    /// that passes data on every 200 ms makes two or three of eight). A busy machine that wakes late now and then
    /// merges a few deliveries, not half of them.
    public static func verdict(arrivals: [Double], interval: Double) -> Verdict {
        guard arrivals.count > 1 else { return .asSent }
        let gaps = zip(arrivals.dropFirst(), arrivals).map { $0 - $1 }
        let together = gaps.filter { $0 < interval / 3 }.count
        if together == gaps.count { return .heldUntilEnd }
        let deliveries = gaps.count - together + 1
        if deliveries * 2 < arrivals.count { return .bursts(together: together, gaps: gaps.count) }
        return .asSent
    }

    /// Runs the probe and, when its chunks did not arrive as sent, once more, and judges both runs together. A
    /// buffering or bursting proxy does the same every time; a loaded machine that woke late (or a proxy timer that
    /// fired late) does it now and then. So either run arriving as sent means the path streams, and either run
    /// arriving in bursts means the path passes data on before the end (bursts, not held).
    public static func runConfirmed(
        route: HTTPRoute,
        timeout: TimeAmount,
        on eventLoop: any EventLoop
    ) -> EventLoopFuture<Outcome> {
        Self.run(route: route, timeout: timeout, on: eventLoop).flatMap { first in
            guard first.verdict != .asSent else { return eventLoop.makeSucceededFuture(first) }
            return Self.run(route: route, timeout: timeout, on: eventLoop).map { second in
                Outcome(verdict: Self.combined(first.verdict, second.verdict), responseHeadTime: first.responseHeadTime)
            }.recover { _ in first }
        }
    }

    /// The verdict of two runs of the probe along one path: as sent beats bursts, which beat held until the end.
    public static func combined(_ first: Verdict, _ second: Verdict) -> Verdict {
        switch (first, second) {
        case (.asSent, _), (_, .asSent): return .asSent
        case (.bursts, _): return first
        case (_, .bursts): return second
        default: return .heldUntilEnd
        }
    }

    /// Runs the probe along `route`; fails when the request fails or the answer does not come within `timeout`.
    public static func run(
        route: HTTPRoute,
        chunks: Int = Self.defaultChunks,
        interval: TimeAmount = Self.defaultInterval,
        timeout: TimeAmount,
        on eventLoop: any EventLoop
    ) -> EventLoopFuture<Outcome> {
        let promise = eventLoop.makePromise(of: Outcome.self)
        let start = NIODeadline.now()
        let deadline = eventLoop.scheduleTask(in: timeout) {
            promise.fail(TransportError.timedOut(.chunked, phase: "streaming delivery probe", seconds: timeout.seconds))
        }
        HTTPClientChannel.dial(route: route, on: eventLoop, timeout: timeout).whenComplete { result in
            switch result {
            case .failure(let error):
                promise.fail(error)
            case .success(let bound):
                let channel = bound.value
                let head = HTTPRequestHead(
                    version: .http1_1, method: .GET,
                    uri: route.requestTarget("probe?n=\(chunks)&i=\(interval.nanoseconds / 1_000_000)"),
                    headers: route.baseHeaders()
                )
                var headTime: TimeAmount?
                var arrivals: [Double] = []
                channel.send(head, body: nil, end: true) { event in
                    switch event {
                    case .head(let response):
                        guard response.status == .ok else {
                            channel.close()
                            promise.fail(route.proxyError(for: response, method: "GET") ?? TransportError.unexpectedStatus(
                                .chunked, status: Int(response.status.code), reason: response.status.reasonPhrase,
                                hint: "the server or a proxy in the path refused the delivery probe"
                            ))
                            return
                        }
                        headTime = .now() - start
                    case .body(let body):
                        let now = Double((NIODeadline.now() - start).nanoseconds) / 1e9
                        for byte in body.readableBytesView where byte == UInt8(ascii: "\n") { arrivals.append(now) }
                    case .end:
                        channel.close()
                        guard arrivals.count == chunks, let headTime else {
                            promise.fail(TransportError.protocolViolation("the delivery probe's answer had \(arrivals.count) of \(chunks) chunks"))
                            return
                        }
                        let verdict = Self.verdict(arrivals: arrivals, interval: Double(interval.nanoseconds) / 1e9)
                        promise.succeed(Outcome(verdict: verdict, responseHeadTime: headTime))
                    case .failed(let error):
                        promise.fail(error)
                    }
                }
                promise.futureResult.assumeIsolated().whenComplete { _ in channel.close() }
            }
        }
        promise.futureResult.whenComplete { _ in deadline.cancel() }
        return promise.futureResult
    }
}
