/// Deterministic JSON log lines: a text corpus that compresses the way real logs do (repeated keys, varying values).
public struct TextGenerator: Sendable {
    private var random: PatternGenerator
    private var pending: [UInt8] = []
    private var sequence = 0

    private static let levels = ["info", "debug", "warning", "error"]
    private static let paths = ["/api/v1/users", "/api/v1/orders", "/healthz", "/api/v2/search", "/static/app.js"]
    private static let agents = ["curl/8.5.0", "Mozilla/5.0 (X11; Linux x86_64)", "okhttp/4.12.0", "python-requests/2.31"]

    public init(seed: UInt64) {
        self.random = PatternGenerator(seed: seed)
    }

    /// The next `count` bytes of the corpus.
    public mutating func next(_ count: Int) -> [UInt8] {
        while self.pending.count < count {
            self.pending += Array(self.line().utf8)
        }
        let chunk = Array(self.pending.prefix(count))
        self.pending.removeFirst(count)
        return chunk
    }

    private mutating func line() -> String {
        let bytes = self.random.next(8)
        self.sequence += 1
        let status = [200, 200, 200, 201, 204, 304, 404, 500][Int(bytes[0] % 8)]
        return """
            {"ts":"2026-11-26T12:\(10 + Int(bytes[1] % 50)):\(10 + Int(bytes[2] % 50)).\(100 + Int(bytes[3]))Z",\
            "level":"\(Self.levels[Int(bytes[4] % 4)])","seq":\(self.sequence),"method":"GET",\
            "path":"\(Self.paths[Int(bytes[5] % 5)])","status":\(status),"bytes":\(Int(bytes[6]) * 37),\
            "agent":"\(Self.agents[Int(bytes[7] % 4)])","latency_ms":\(Int(bytes[2]) % 97)}

            """
    }
}
