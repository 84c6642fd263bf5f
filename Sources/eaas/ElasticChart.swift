import Foundation
import MoE

/// `eaas bench elastic`'s picture, drawn as SVG: three panels over the trace's time, demand
/// (requests/s), pods per policy, and p99 time to first token per 10 s per policy against the SLO.
enum ElasticChart {
    static let colors: [ElasticPolicy: String] = [.static: "#7f7f7f", .shardHPA: "#1f77b4", .loadAware: "#ff7f0e"]
    static let width = 900.0, panelHeight = 200.0, left = 70.0, right = 150.0, top = 30.0, gap = 50.0

    static func svg(trace: LoadTrace, runs: [ElasticRun], slo: ElasticCalibration) -> String {
        let end = max(1, runs.flatMap(\.samples).map(\.seconds).max() ?? trace.duration)
        let demand = stride(from: 0.0, through: end, by: end / 200).map { ($0, trace.rate(at: $0)) }
        let pods = runs.map { run in (run.policy, run.samples.map { ($0.seconds, Double($0.pods)) }) }
        let latency = runs.map { run -> (ElasticPolicy, [(Double, Double)]) in
            let buckets = Dictionary(grouping: run.requests) { Int($0.sentAt / 10) }
            return (run.policy, buckets.keys.sorted().map { (Double($0) * 10 + 5, ElasticRun.p99(buckets[$0]!.map(\.ttft)) * 1000) })
        }
        var body = ""
        body += panel(index: 0, title: "demand (requests/s)", end: end, series: [("trace", "#2ca02c", demand)], reference: nil)
        body += panel(index: 1, title: "expert pods", end: end, series: pods.map { ($0.0.rawValue, colors[$0.0]!, $0.1) }, reference: nil)
        body += panel(index: 2, title: "p99 time to first token per 10 s (ms)", end: end,
                      series: latency.map { ($0.0.rawValue, colors[$0.0]!, $0.1) }, reference: ("SLO", slo.ttftTarget * 1000))
        let height = top + 3 * (panelHeight + gap)
        return """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" font-family="sans-serif" font-size="12">
            <rect width="100%" height="100%" fill="white"/>
            \(body)</svg>

            """
    }

    /// One panel: axes, a y scale from 0 to the largest value, the series as polylines, a legend.
    static func panel(index: Int, title: String, end: Double, series: [(String, String, [(Double, Double)])], reference: (String, Double)?) -> String {
        let y0 = top + Double(index) * (panelHeight + gap)
        let plotWidth = width - left - right
        let maximum = max(1e-9, (series.flatMap { $0.2.map(\.1) } + [reference?.1 ?? 0]).max() ?? 1) * 1.1
        func x(_ t: Double) -> Double { left + t / end * plotWidth }
        func y(_ v: Double) -> Double { y0 + panelHeight - v / maximum * panelHeight }
        var text = "<text x=\"\(left)\" y=\"\(y0 - 8)\" font-weight=\"bold\">\(title)</text>\n"
        text += "<line x1=\"\(left)\" y1=\"\(y0 + panelHeight)\" x2=\"\(left + plotWidth)\" y2=\"\(y0 + panelHeight)\" stroke=\"black\"/>\n"
        text += "<line x1=\"\(left)\" y1=\"\(y0)\" x2=\"\(left)\" y2=\"\(y0 + panelHeight)\" stroke=\"black\"/>\n"
        for tick in 0...4 {
            let value = maximum / 1.1 * Double(tick) / 4
            text += "<text x=\"\(left - 6)\" y=\"\(y(value) + 4)\" text-anchor=\"end\">\(format(value))</text>\n"
            let t = end * Double(tick) / 4
            text += "<text x=\"\(x(t))\" y=\"\(y0 + panelHeight + 16)\" text-anchor=\"middle\">\(Int(t)) s</text>\n"
        }
        if let (label, value) = reference {
            text += "<line x1=\"\(left)\" y1=\"\(y(value))\" x2=\"\(left + plotWidth)\" y2=\"\(y(value))\" stroke=\"#d62728\" stroke-dasharray=\"6,4\"/>\n"
            text += "<text x=\"\(left + plotWidth + 8)\" y=\"\(y(value) + 4)\" fill=\"#d62728\">\(label)</text>\n"
        }
        for (number, (name, color, points)) in series.enumerated() where !points.isEmpty {
            let path = points.map { String(format: "%.1f,%.1f", x($0.0), y($0.1)) }.joined(separator: " ")
            text += "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\" points=\"\(path)\"/>\n"
            text += "<text x=\"\(left + plotWidth + 8)\" y=\"\(y0 + 14 + Double(number) * 16)\" fill=\"\(color)\">\(name)</text>\n"
        }
        return text
    }

    static func format(_ value: Double) -> String { value >= 10 ? String(format: "%.0f", value) : String(format: "%.1f", value) }
}
