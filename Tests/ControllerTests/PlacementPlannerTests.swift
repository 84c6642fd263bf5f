import Controller
import Testing

/// The load-aware placement planner's arithmetic, table by table.
@Suite("Placement planner (EPLB-style)")
struct PlacementPlannerTests {
    @Test("Each extra slot goes to the expert with the highest load per replica", arguments: [
        // loads, slots, replicas
        ([10.0, 1, 1, 1], 4, [1, 1, 1, 1]),
        ([10.0, 1, 1, 1], 7, [4, 1, 1, 1]),
        ([10.0, 6, 1, 1], 8, [4, 2, 1, 1]),           // 10 → 5 < 6 → 3 → 10/3 > 3: the last to expert 0
        ([4.0, 4, 4, 4], 6, [2, 2, 1, 1]),            // ties go to the lower index
        ([0.0, 0, 0], 5, [3, 1, 1]),                  // no load: ties all the way
        ([5.0, 1], 1, [1, 1]),                        // fewer slots than experts: one each anyway
    ] as [([Double], Int, [Int])])
    func replicasPerExpert(loads: [Double], slots: Int, expected: [Int]) {
        #expect(PlacementPlanner.replicas(loads: loads, slots: slots) == expected)
    }

    @Test("Slots at a target: one per expert, ceil(load/target) where more", arguments: [
        ([0.0, 0, 0], 100.0, 3), ([250.0, 50, 100], 100.0, 5), ([100.0], 100.0, 1), ([100.1], 100.0, 2),
    ] as [([Double], Double, Int)])
    func slotsAtTarget(loads: [Double], target: Double, expected: Int) {
        #expect(PlacementPlanner.slots(loads: loads, target: target) == expected)
    }

    @Test("Hot experts get shards of their own; the rest share shards within the cap, heaviest first into the lightest")
    func packing() {
        // Expert 5 is hot (3 replicas), 2 is warm (2), the rest cold (1).
        let loads: [Double] = [10, 40, 150, 20, 30, 300, 5, 25]
        let shards = PlacementPlanner.pack(loads: loads, replicas: [1, 1, 2, 1, 1, 3, 1, 1], maxExpertsPerShard: 3)
        // The cold ones, heaviest first: 1 (40) → A; 4 (30) → B; 7 (25) → B (55); 3 (20) → A (60);
        // 0 (10) → B (65, full); 6 (5) → A (65).
        #expect(shards.map(\.experts) == [[5], [2], [0, 4, 7], [1, 3, 6]])
        #expect(shards.map(\.replicas) == [3, 2, 1, 1])
        #expect(shards.map(\.load) == [300, 150, 65, 65])
    }

    @Test("Packing balances a class's shards and never exceeds the cap", arguments: [1, 2, 3, 4, 8])
    func packingCapAndBalance(cap: Int) {
        let loads: [Double] = [9, 8, 7, 6, 5, 4, 3, 2, 1, 1, 1, 1]
        let shards = PlacementPlanner.pack(loads: loads, replicas: [Int](repeating: 1, count: loads.count), maxExpertsPerShard: cap)
        #expect(shards.allSatisfy { $0.experts.count <= cap })
        #expect(shards.count == (loads.count + cap - 1) / cap, "as few shards as the cap allows")
        #expect(shards.flatMap(\.experts).sorted() == Array(loads.indices), "every expert exactly once")
        if cap < loads.count {
            let spread = (shards.map(\.load).max() ?? 0) - (shards.map(\.load).min() ?? 0)
            #expect(spread <= 9, "heaviest-first into the lightest keeps shards within one expert's load of each other")
        }
    }

    @Test("The plan gives the hottest expert the most replicas and a shard of its own")
    func hottestExpertGetsMost() {
        let loads: [Double] = [50, 900, 60, 40, 30, 20, 400, 10]
        let plan = PlacementPlanner.plan(loads: loads, target: 200, maxExpertsPerShard: 4)
        let hottest = plan.first { $0.experts.contains(1) }!
        #expect(hottest.experts == [1])
        #expect(hottest.replicas == plan.map(\.replicas).max())
        #expect(hottest.replicas == 5)
        #expect(plan.first { $0.experts.contains(6) }?.experts == [6])
        #expect(plan.flatMap(\.experts).sorted() == Array(0..<8))
    }

    @Test("Peak load per replica with each shard at the replicas its autoscaler gives it; imbalance is peak over mean", arguments: [
        // shard loads, peak, imbalance (target 100, replicas 1...3)
        ([100.0, 100], 100.0, 1.0), ([300.0, 100], 100.0, 1.0), ([510.0, 15], 170.0, 170.0 / (525.0 / 4)),
        ([50.0, 50], 50.0, 1.0), ([0.0, 0], 0.0, 1.0),
    ] as [([Double], Double, Double)])
    func peakAndImbalance(shardLoads: [Double], peak: Double, imbalance: Double) {
        #expect(PlacementPlanner.peakLoadPerReplica(shardLoads: shardLoads, target: 100, bounds: 1...3) == peak)
        #expect(abs(PlacementPlanner.imbalance(shardLoads: shardLoads, target: 100, bounds: 1...3) - imbalance) < 1e-9)
    }

    @Test("Autoscaler replicas for a shard's load: ceil(load/target) within bounds", arguments: [
        (0.0, 1), (100.0, 1), (100.5, 2), (250.0, 3), (10_000.0, 3),
    ] as [(Double, Int)])
    func autoscalerReplicas(load: Double, replicas: Int) {
        #expect(PlacementPlanner.replicas(load: load, target: 100, bounds: 1...3) == replicas)
    }

    @Test("Hysteresis: a new grouping only when it lowers the peak enough, and not too soon after the last", arguments: [
        // current, proposed, min improvement, seconds since change, replan?, reason fragment
        ([[0, 1, 2], [3, 4, 5]], [[0], [1], [2, 4], [3, 5]], 0.2, nil, true, "peak load per replica 170.0 → 83.3"),
        ([[0, 1, 2], [3, 4, 5]], [[0], [1], [2, 4], [3, 5]], 0.6, nil, false, "below the 60%"),
        ([[0, 1, 2], [3, 4, 5]], [[0], [1], [2, 4], [3, 5]], 0.2, 30, false, "changed 30 s ago"),
        ([[0, 1, 2], [3, 4, 5]], [[0], [1], [2, 4], [3, 5]], 0.2, 600, true, "51% lower"),
        ([[0, 1, 2], [3, 4, 5]], [[5, 4, 3], [2, 1, 0]], 0.0, nil, false, "the one running"),
    ] as [([[Int]], [[Int]], Double, Double?, Bool, String)])
    func hysteresis(current: [[Int]], proposed: [[Int]], minImprovement: Double, since: Double?, replan: Bool, reason: String) {
        // Two hot experts in one static shard: it is held at 3 replicas with 170 tokens/s each.
        let loads: [Double] = [250, 250, 10, 5, 0, 0]
        let decision = PlacementPlanner.decide(current: current, proposed: proposed, loads: loads, target: 100, bounds: 1...3,
                                               minImprovement: minImprovement, secondsSinceChange: since, minInterval: 300)
        #expect(decision.replan == replan)
        #expect(decision.reason.contains(reason), "\(decision.reason)")
    }

    @Test("The planner splits two hot experts that a static grouping put together")
    func plannerSplitsHotPair() {
        let plan = PlacementPlanner.plan(loads: [250, 250, 10, 5, 0, 0], target: 100, maxExpertsPerShard: 3)
        // Cold ones heaviest first: 2 (10) → A; 3 (5) → B; 4 and 5 (0) → B, the lighter, until full.
        #expect(plan.map(\.experts) == [[0], [1], [2], [3, 4, 5]])
        #expect(plan.map(\.replicas) == [3, 3, 1, 1])
    }

    @Test("Without measured load nothing is re-planned")
    func noLoadNoReplan() {
        let decision = PlacementPlanner.decide(current: [[0, 1]], proposed: [[0], [1]], loads: [0, 0], target: 100, bounds: 1...3,
                                               minImprovement: 0.1, secondsSinceChange: nil, minInterval: 0)
        #expect(!decision.replan)
        #expect(decision.reason == "no load measured yet")
    }
}
