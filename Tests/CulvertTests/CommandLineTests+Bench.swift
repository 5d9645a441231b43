import Foundation
import Testing

/// `culvert bench` with tiny loads: not for its figures (a debug build's mean nothing), but to check that every path
/// is measured and that its relays and tunnel processes never outlive it.
extension CommandLineTests {
    static let tinyLoad = ["bench", "--mib", "1", "--pings", "20", "--streams", "4", "--seconds", "0.2", "--repeats", "1"]

    /// The PIDs of the processes whose parent is `pid`.
    static func children(of pid: Int32) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { Int32($0) }.filter { child in
            guard let stat = try? String(contentsOfFile: "/proc/\(child)/stat", encoding: .utf8),
                  let end = stat.lastIndex(of: ")") else { return false }
            // After "(comm)": state, then the parent's PID.
            let fields = stat[stat.index(after: end)...].split(separator: " ")
            return fields.count > 1 && Int32(fields[1]) == pid
        }
    }

    static func isRunning(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let end = stat.lastIndex(of: ")") else { return false }
        return !stat[stat.index(after: end)...].hasPrefix(" Z")
    }

    /// The table has a column for the direct path, socat, two chained socats, two chained SwiftNIO relays and
    /// culvert, with every figure measured, and culvert's ratio to each relay path.
    @Test func benchMeasuresEveryPathAndPrintsRatiosToEachRelayPath() throws {
        let (status, text) = try self.runForOutput(Self.tinyLoad)
        #expect(status == 0)
        let lines = text.split(separator: "\n").map(String.init)
        let header = try #require(lines.first { $0.contains("direct") })
        for column in ["direct", "socat", "socat+socat", "nio+nio", "culvert", "culvert/socat", "culvert/socat+socat",
                       "culvert/nio+nio"] {
            #expect(header.split(separator: " ").contains(Substring(column)), "no column \(column)")
        }
        for row in ["single stream up", "single stream down", "ping-pong p50", "ping-pong p99", "round trips/s"] {
            let line = try #require(lines.first { $0.contains(row) }, "no row \(row)")
            // Five paths and three ratios, every one measured.
            let values = line.split(separator: " ").suffix(8)
            #expect(values.count == 8 && !values.contains("n/a"), "\(line)")
            #expect(values.suffix(3).allSatisfy { $0.hasSuffix("×") }, "\(line)")
        }
    }

    /// SIGTERM in the middle of a run stops the socat and SwiftNIO relays and the tunnel's server and client too.
    @Test func sigtermStopsEveryProcessTheBenchStarted() throws {
        let process = Process()
        process.executableURL = Self.executable
        // Enough round trips that the run is still going when the signal comes.
        process.arguments = Self.tinyLoad.map { $0 == "20" ? "100000000" : $0 }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        // 3 socat relays, 6 chained ones, 6 chained SwiftNIO relays, the culvert server and client.
        var children: [Int32] = []
        for _ in 0..<300 where children.count < 17 {
            usleep(100_000)
            children = Self.children(of: process.processIdentifier)
        }
        #expect(children.count >= 17)
        process.terminate()
        process.waitUntilExit()
        #expect(process.terminationReason == .exit && process.terminationStatus == 128 + SIGTERM)
        for _ in 0..<50 where children.contains(where: Self.isRunning) { usleep(100_000) }
        #expect(!children.contains(where: Self.isRunning), "left running: \(children.filter(Self.isRunning))")
    }
}
