import Foundation
import MoE

/// The common frame of every `eaas bench`: a readable table, or with `--json` one JSON document
/// `{"bench": NAME, "machine": {...}, "results": [...], ...summary}` on stdout (DESIGN.md).
struct BenchReport {
    let bench: String
    var results: [[String: Any]] = []
    var summary: [String: Any] = [:]

    /// What the numbers were measured on.
    static func machine() -> [String: Any] {
        var cpu = "unknown"
        if let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
           let line = text.split(separator: "\n").first(where: { $0.hasPrefix("model name") }),
           let value = line.split(separator: ":", maxSplits: 1).last {
            cpu = value.trimmingCharacters(in: .whitespaces)
        }
        #if DEBUG
        let build = "debug"
        #else
        let build = "release"
        #endif
        return [
            "cpu": cpu, "cores": ProcessInfo.processInfo.activeProcessorCount,
            "memory_bytes": Int(ProcessInfo.processInfo.physicalMemory),
            "blas": "OpenBLAS \(BLAS.coreName)", "blas_threads": BLAS.threads,
            "kernels": BLAS.kernelVariant, "build": build,
            "date": ISO8601DateFormatter().string(from: Date()),
        ]
    }

    func json() throws -> String {
        var document: [String: Any] = ["bench": bench, "machine": Self.machine(), "results": results]
        for (key, value) in summary { document[key] = value }
        let data = try JSONSerialization.data(withJSONObject: document, options: [.prettyPrinted, .sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }
}

/// A plain text table with right-aligned columns.
struct TextTable {
    let columns: [String]
    var rows: [[String]] = []

    func render() -> String {
        var widths = columns.map(\.count)
        for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { String(repeating: " ", count: widths[$0.offset] - $0.element.count) + $0.element }.joined(separator: "  ")
        }
        return ([line(columns), line(widths.map { String(repeating: "-", count: $0) })] + rows.map(line)).joined(separator: "\n")
    }
}

/// Wall-clock time of a closure, in seconds.
@inline(never)
func timeSeconds(_ body: () throws -> Void) rethrows -> Double {
    let start = DispatchTime.now().uptimeNanoseconds
    try body()
    return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
}

extension Array where Element == Double {
    var median: Double {
        let sorted = self.sorted()
        guard !sorted.isEmpty else { return .nan }
        return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }
}
