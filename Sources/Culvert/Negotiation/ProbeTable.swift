import Foundation
import CulvertTransport

/// The table `culvert probe` prints: one row per transport, each column as wide as its widest text (a failure is never
/// cut into the next column), and the detail of a failure on the line below its row.
public enum ProbeTable {
    /// The table for `results`, one line per row, each ending in a newline.
    public static func text(_ results: [ProbeResult]) -> String {
        let header = ["transport", "works", "failure", "rtt ms", "time ms", "upstream", "body"]
        let rows = results.map { result in
            [
                result.transport.rawValue,
                result.works ? "yes" : "no",
                result.failure.map { "\($0.rawValue): \($0.phrase)" } ?? "-",
                result.roundTripMilliseconds.map { String(format: "%.1f", $0) } ?? "-",
                String(format: "%.0f", result.elapsedMilliseconds),
                result.upstream?.rawValue ?? "-",
                result.bodyShape?.rawValue ?? "-",
            ]
        }
        let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
        func line(_ cells: [String]) -> String {
            let padded = cells.indices.map { column in
                column == cells.count - 1 ? cells[column] : cells[column].padding(toLength: widths[column] + 2, withPad: " ", startingAt: 0)
            }
            return padded.joined() + "\n"
        }
        var text = line(header)
        let indent = String(repeating: " ", count: widths[0] + 2)
        for (result, row) in zip(results, rows) {
            text += line(row)
            if !result.detail.isEmpty { text += indent + result.detail + "\n" }
        }
        return text
    }

}
