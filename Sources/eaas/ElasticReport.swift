import Foundation
import MoE

/// `eaas bench elastic`'s table and JSON (keys in issue 18; scripts read them).
struct ElasticReport {
    let trace: LoadTrace
    let calibration: ElasticCalibration
    let runs: [ElasticRun]
    let cpuLimit: Double
    let maxReplicas: Int
    let enforcement: String
    let picture: String

    func run(_ policy: ElasticPolicy) -> ElasticRun? { runs.first { $0.policy == policy } }

    /// 1 − pod-seconds of `policy` ÷ pod-seconds of `reference`, when both ran.
    func saving(_ policy: ElasticPolicy, against reference: ElasticPolicy) -> Double? {
        guard let a = run(policy), let b = run(reference), b.podSeconds > 0 else { return nil }
        return 1 - a.podSeconds / b.podSeconds
    }

    /// The five busiest experts' share of all expert-tokens, from the load-aware run (else the last).
    var top5ExpertShare: Double {
        let totals = (run(.loadAware) ?? runs.last)?.expertTotals ?? []
        let sum = totals.reduce(0, +)
        return sum > 0 ? totals.sorted(by: >).prefix(5).reduce(0, +) / sum : 0
    }

    /// The load-aware plan's check: the hottest expert (over the planner's window) and the replicas it and every expert got.
    var placementCheck: [String: Any]? {
        guard let run = run(.loadAware), let placement = run.placement, placement.revision > 0 else { return nil }
        let load = run.windowExpertLoad
        let replicas = run.expertReplicas(experts: load.count)
        guard let hottest = load.indices.max(by: { load[$0] < load[$1] }) else { return nil }
        return ["revision": placement.revision, "changed_at_s": run.placementChangedAt ?? 0, "window_expert_tokens": load.map { Int($0) },
                "expert_replicas": replicas, "hottest_expert": hottest, "hottest_expert_replicas": replicas[hottest],
                "shards": placement.shards.map { ["experts": $0.experts, "replicas": $0.replicas] as [String: Any] }]
    }

    var summary: [String: Any] {
        var summary: [String: Any] = [
            "ideal_saving": trace.idealSaving, "capacity_enforcement": enforcement, "top5_expert_share": top5ExpertShare,
            "trace": ["duration_s": trace.duration, "peak_rps": trace.peakRate, "mean_rps": trace.meanRate],
            "slo": ["ttft_target_ms": calibration.ttftTarget * 1000, "tpot_target_ms": calibration.tpotTarget * 1000,
                    "calibration_ttft_p99_ms": calibration.ttftP99 * 1000, "calibration_tpot_p99_ms": calibration.tpotP99 * 1000,
                    "target_tokens_per_replica": calibration.target, "calibration_served_fraction": calibration.servedFraction],
            "cpu_limit_per_pod": cpuLimit, "max_replicas": maxReplicas, "cores": ProcessInfo.processInfo.activeProcessorCount,
            "picture": picture,
        ]
        if let saving = saving(.loadAware, against: .static) {
            summary["saving_vs_static"] = saving
            summary["efficiency"] = trace.idealSaving > 0 ? saving / trace.idealSaving : 0
        }
        if let saving = saving(.loadAware, against: .shardHPA) { summary["saving_vs_shard_hpa"] = saving }
        if let check = placementCheck { summary["placement"] = check }
        return summary
    }

    func policyJSON(_ run: ElasticRun) -> [String: Any] {
        [
            "name": run.policy.rawValue, "pod_seconds": run.podSeconds, "rollout_pod_seconds": run.rolloutPodSeconds,
            "rollouts": run.rollouts, "cpu_seconds": run.cpuSeconds, "tokens": run.tokens,
            "slo_attainment": run.sloAttainment(calibration), "failed_requests": run.failed, "shed_requests": run.shed.count,
            "requests": run.requests.count, "ttft_p99_ms": run.ttftP99 * 1000, "tpot_p99_ms": run.tpotP99 * 1000,
            "series": run.samples.map { ["t": ($0.seconds * 10).rounded() / 10, "demand_rps": $0.demand, "pods": $0.pods, "ready_pods": $0.readyPods] as [String: Any] },
        ]
    }

    func json() throws -> String {
        var report = BenchReport(bench: "elastic")
        report.summary = ["policies": runs.map(policyJSON), "summary": summary]
        return try report.json()
    }

    func text() -> String {
        var table = TextTable(columns: ["policy", "pod-s", "CPU-s", "tokens", "SLO met", "TTFT p99 ms", "TPOT p99 ms", "failed", "shed", "pod-s vs static"])
        let staticPods = run(.static)?.podSeconds
        for run in runs {
            table.rows.append([run.policy.rawValue, String(format: "%.0f", run.podSeconds), String(format: "%.1f", run.cpuSeconds), "\(run.tokens)",
                               String(format: "%.1f%%", run.sloAttainment(calibration) * 100), String(format: "%.0f", run.ttftP99 * 1000),
                               String(format: "%.1f", run.tpotP99 * 1000), "\(run.failed)", "\(run.shed.count)",
                               staticPods.map { String(format: "%.2f", run.podSeconds / $0) } ?? "-"])
        }
        var lines = [
            String(format: "trace: %.0f s, peak %.1f requests/s, mean %.1f → ideal saving 1 − mean/peak = %.1f%%", trace.duration, trace.peakRate, trace.meanRate, trace.idealSaving * 100),
            String(format: "SLO (fixed by the calibration at the peak): time to first token ≤ %.0f ms, per output token ≤ %.1f ms (2 × its p99 %.0f / %.1f ms); target %.0f expert-tokens/s per replica",
                   calibration.ttftTarget * 1000, calibration.tpotTarget * 1000, calibration.ttftP99 * 1000, calibration.tpotP99 * 1000, calibration.target),
            String(format: "pods: %.2f CPU each (%@), at most %d per shard; this machine has %d cores, shared with the attention worker",
                   cpuLimit, enforcement, maxReplicas, ProcessInfo.processInfo.activeProcessorCount),
            "", table.render(), "",
        ]
        if let saving = saving(.loadAware, against: .static) {
            lines.append(String(format: "load-aware saves %.1f%% of static's pod-seconds (goal ≥ 37.5%%), %.2f of the ideal (goal ≥ 0.8)", saving * 100,
                                trace.idealSaving > 0 ? saving / trace.idealSaving : 0))
        }
        if let saving = saving(.loadAware, against: .shardHPA) {
            lines.append(String(format: "load-aware uses %.1f%% fewer pod-seconds than shard-hpa (goal ≥ 15%%)", saving * 100))
        }
        if let run = run(.loadAware), run.podSeconds > 0 {
            // What make-before-break costs: every pod counts while both groupings run.
            lines.append(String(format: "load-aware: %d re-plans; %.0f pod-s (%.1f%% of its pod-seconds) while a rollout was under way",
                                run.rollouts, run.rolloutPodSeconds, run.rolloutPodSeconds / run.podSeconds * 100))
        }
        lines.append(String(format: "top-5 experts' share of expert-tokens: %.1f%%", top5ExpertShare * 100))
        if let check = placementCheck {
            lines.append("last plan (revision \(check["revision"]!)): replicas per expert \(check["expert_replicas"]!); hottest expert over its window \(check["hottest_expert"]!)")
        }
        lines.append("picture: \(picture)")
        return lines.joined(separator: "\n")
    }
}
