import Foundation
import Testing
@testable import Transport

func expert(_ e: UInt16, layer: UInt16 = 0) -> HostedExpert { HostedExpert(layer: layer, expert: e) }

func server(_ id: String, _ experts: [UInt16], ready: Bool = true) -> ServerInfo {
    ServerInfo(id: id, address: "127.0.0.1:\(7000 + Int(id.unicodeScalars.first!.value))", experts: experts.map { expert($0) }, ready: ready)
}

@Suite("Dispatcher: membership, replica choice, step plans, timeouts")
struct DispatchTests {
    @Test("A view lists the ready replicas of each expert and skips draining servers")
    func membershipView() {
        let view = MembershipView(servers: [server("b", [0, 1]), server("a", [1]), server("c", [1, 2], ready: false)])
        #expect(view.servers.map(\.id) == ["a", "b", "c"])
        #expect(view.replicas(of: expert(1)) == [0, 1])
        #expect(view.replicas(of: expert(2)) == [])
        #expect(view.hostedExperts == [expert(0), expert(1)])
    }

    @Test("Replica choice: the only replica, an error naming a missing expert, and the less loaded of two")
    func chooserBasics() throws {
        let view = MembershipView(servers: [server("a", [0, 1]), server("b", [1])])
        var chooser = ReplicaChooser()
        #expect(try chooser.choose([(expert(0), 5)], view: view, outstanding: [0, 0]) == [expert(0): 0])
        #expect(throws: NoReplica(expert: expert(9))) { try chooser.choose([(expert(9), 1)], view: view, outstanding: [0, 0]) }
        for _ in 0..<20 {
            #expect(try chooser.choose([(expert(1), 5)], view: view, outstanding: [500, 0]) == [expert(1): 1])
            #expect(try chooser.choose([(expert(1), 5)], view: view, outstanding: [0, 500]) == [expert(1): 0])
        }
    }

    @Test("A step keeps to the servers it already contacts unless they are loaded beyond the contact cost")
    func fewServersPerStep() throws {
        let view = MembershipView(servers: (0..<4).map { server(String(UnicodeScalar(UInt8(97 + $0))), [0, 1, 2, 3]) })
        var chooser = ReplicaChooser(contactCost: 64)
        for _ in 0..<50 {
            let choice = try chooser.choose([(expert(0), 4), (expert(1), 3), (expert(2), 2), (expert(3), 1)], view: view, outstanding: [0, 0, 0, 0])
            #expect(Set(choice.values).count == 1, "10 tokens fit one server: \(choice)")
        }
        let heavy = try chooser.choose([(expert(0), 100), (expert(1), 100)], view: view, outstanding: [0, 0, 0, 0])
        #expect(Set(heavy.values).count == 2, "100 tokens each exceed the 64-token contact cost")
    }

    @Test("A worker keeps to the replica that served an expert last while it is not more loaded; it moves when that one is loaded or gone")
    func stickiness() throws {
        let servers = (0..<3).map { server(String(UnicodeScalar(UInt8(97 + $0))), [0, 1]) }
        var chooser = ReplicaChooser(contactCost: 1 << 20, seed: 3)
        let view = MembershipView(servers: servers)
        let first = try chooser.choose([(expert(0), 6), (expert(1), 2)], view: view, outstanding: [])
        #expect(Set(first.values).count == 1)
        for _ in 0..<50 {
            #expect(try chooser.choose([(expert(0), 6), (expert(1), 2)], view: view, outstanding: []) == first)
        }
        let used = first[expert(0)]!
        var loaded = [0, 0, 0]
        loaded[used] = 1000
        #expect(try chooser.choose([(expert(0), 6)], view: view, outstanding: loaded)[expert(0)] != used)
        let without = MembershipView(servers: servers.enumerated().filter { $0.offset != used }.map(\.element))
        let moved = try chooser.choose([(expert(0), 6)], view: without, outstanding: [])[expert(0)]!
        #expect(without.servers[moved].id != servers[used].id)
        // Separate workers (choosers) start on different replicas.
        let starts = Set((0..<40).map { seed -> Int in
            var other = ReplicaChooser(contactCost: 1 << 20, seed: UInt64(seed) &* 0x9e37_79b9_7f4a_7c15)
            return try! other.choose([(expert(0), 6)], view: view, outstanding: [])[expert(0)]!
        })
        #expect(starts.count == 3)
    }

    @Test("Over many steps, load spreads evenly over equal replicas")
    func balance() throws {
        let view = MembershipView(servers: (0..<4).map { server(String(UnicodeScalar(UInt8(97 + $0))), [0]) })
        var counts = [0, 0, 0, 0]
        var chooser = ReplicaChooser(contactCost: 0, seed: 7)
        var load = [0, 0, 0, 0]
        for _ in 0..<4000 {
            let s = try chooser.choose([(expert(0), 1)], view: view, outstanding: load)[expert(0)]!
            counts[s] += 1
            load[s] += 1
        }
        #expect(counts.max()! - counts.min()! <= 4, "power of two choices keeps cumulative load level: \(counts)")
    }

    @Test("A step plan gives each server its tokens with their experts in ascending order and padded slots")
    func stepPlan() {
        // Token 0 → experts 3, 1; token 1 → 2, 0; token 2 → 1, 2. Servers: 0 hosts {1, 2}, 1 hosts {0, 3}.
        let ids: [Int32] = [3, 1, 2, 0, 1, 2]
        let weights: [Float] = [0.6, 0.4, 0.7, 0.3, 0.5, 0.5]
        let choice = [expert(1): 0, expert(2): 0, expert(0): 1, expert(3): 1]
        #expect(StepPlanner.demand(layer: 0, ids: ids).map { "\($0.expert.expert):\($0.tokens)" } == ["0:1", "1:2", "2:2", "3:1"])
        let plan = StepPlanner.plan(layer: 0, tokens: 3, topK: 2, ids: ids, weights: weights, choice: choice)
        #expect(plan.count == 2)
        #expect(plan[0].server == 0 && plan[0].tokens == [0, 1, 2] && plan[0].slotsPerToken == 2)
        #expect(plan[0].ids == [1, RequestHeader.emptySlot, 2, RequestHeader.emptySlot, 1, 2])
        #expect(plan[0].weights == [0.4, 0, 0.7, 0, 0.5, 0.5])
        #expect(plan[1].server == 1 && plan[1].tokens == [0, 1] && plan[1].ids == [3, 0] && plan[1].weights == [0.6, 0.3])
    }

    @Test("Random steps: every (token, expert, weight) lands exactly once, at its chosen server, in ascending order")
    func stepPlanProperty() {
        var state: UInt64 = 99
        func next(_ n: Int) -> Int {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Int((state >> 33) % UInt64(n))
        }
        for _ in 0..<200 {
            let experts = 1 + next(40), k = 1 + next(min(8, experts)), tokens = 1 + next(30), servers = 1 + next(6)
            var ids: [Int32] = [], weights: [Float] = []
            for _ in 0..<tokens {
                var picked = Set<Int>()
                while picked.count < k { picked.insert(next(experts)) }
                ids += picked.map { Int32($0) }
                weights += (0..<k).map { _ in Float(next(1000)) / 1000 }
            }
            var choice: [HostedExpert: Int] = [:]
            for e in 0..<experts { choice[expert(UInt16(e))] = next(servers) }
            let plan = StepPlanner.plan(layer: 0, tokens: tokens, topK: k, ids: ids, weights: weights, choice: choice)
            var seen: [String] = []
            for batch in plan {
                #expect(batch.tokens == batch.tokens.sorted() && Set(batch.tokens).count == batch.tokens.count)
                for (row, t) in batch.tokens.enumerated() {
                    let slotIDs = Array(batch.ids[(row * batch.slotsPerToken)..<((row + 1) * batch.slotsPerToken)])
                    let used = slotIDs.filter { $0 != RequestHeader.emptySlot }
                    #expect(used == used.sorted() && !used.isEmpty)
                    #expect(slotIDs.drop(while: { $0 != RequestHeader.emptySlot }).allSatisfy { $0 == RequestHeader.emptySlot })
                    for (s, id) in slotIDs.enumerated() where id != RequestHeader.emptySlot {
                        #expect(choice[expert(id)] == batch.server)
                        seen.append("\(t):\(id):\(batch.weights[row * batch.slotsPerToken + s])")
                    }
                }
            }
            let expected = (0..<(tokens * k)).map { "\($0 / k):\(ids[$0]):\(weights[$0])" }
            #expect(seen.sorted() == expected.sorted())
        }
    }

    @Test("The adaptive timeout follows measured round trips, stays within bounds and backs off")
    func adaptiveTimeout() {
        var t = AdaptiveTimeout(minimum: .milliseconds(20), maximum: .seconds(5))
        #expect(t.current() == .seconds(5), "no sample yet: the maximum")
        for _ in 0..<50 { t.record(.microseconds(300)) }
        #expect(t.current() == .milliseconds(20), "fast round trips: the minimum")
        for _ in 0..<100 { t.record(.milliseconds(100)) }
        #expect(t.current() >= .milliseconds(199) && t.current() < .milliseconds(230), "steady answers: twice the round trip")
        let base = t.current()
        t.recordTimeout()
        #expect(t.current() >= base * 2 - .microseconds(1) && t.current() <= base * 2 + .microseconds(1))
        for _ in 0..<10 { t.recordTimeout() }
        #expect(t.current() == .seconds(5))
        t.record(.milliseconds(100))
        #expect(t.current() < .milliseconds(300), "a response ends the back-off")
    }

    @Test("Timeouts scale with request size: a prefill-sized request is not timed by decode-sized round trips", arguments: [
        // (pairs of the request, expected timeout in ms after decode requests of 6 pairs took 10 ms:
        // twice the round trip)
        (6, 19...25), (5, 19...25), (8, 19...25),  // same size class (5-8 pairs)
        (16, 39...50), (3072, 7680...11520),       // larger classes, scaled up from the nearest smaller one
        (1, 19...25),                               // smaller: bounded by the nearest larger class
    ] as [(Int, ClosedRange<Int>)])
    func timeoutBySize(pairs: Int, milliseconds: ClosedRange<Int>) {
        var t = AdaptiveTimeout(minimum: .milliseconds(1), maximum: .seconds(30))
        for _ in 0..<200 { t.record(.milliseconds(10), pairs: 6) }
        let timeout = t.current(pairs: pairs)
        #expect(timeout >= .milliseconds(milliseconds.lowerBound) && timeout <= .milliseconds(milliseconds.upperBound), "\(pairs) pairs: \(timeout)")
        // Once its own size class is measured, that estimate is used.
        t.record(.milliseconds(400), pairs: 3000)
        #expect(t.current(pairs: 3072) >= .milliseconds(400) && t.current(pairs: 3072) < .milliseconds(1300))
        #expect(abs((t.typical(pairs: 6) - .milliseconds(10)) / .microseconds(1)) < 2)
        // What a client sleeps through never comes from larger requests.
        #expect(t.typical(pairs: 1) == .zero)
        #expect(abs((t.typical(pairs: 64) - .milliseconds(10)) / .microseconds(1)) < 2, "a smaller class is a lower bound")
    }

    @Test("A membership file is re-read when it changes; a broken edit keeps the last good view and says why")
    func fileMembership() throws {
        let path = NSTemporaryDirectory() + "eaas-members-\(UUID().uuidString).json"
        defer { try? FileManager.default.removeItem(atPath: path) }
        func write(_ text: String) throws { try Data(text.utf8).write(to: URL(fileURLWithPath: path), options: .atomic) }
        try write(#"{"servers": [{"id": "a", "address": "127.0.0.1:7001", "experts": [{"layer": 0, "expert": 1}], "ready": true}]}"#)
        let source = try FileMembership(path: path)
        #expect(source.current().replicas(of: expert(1)) == [0])
        #expect(source.refresh() == nil, "unchanged file")
        try write(#"{"servers": [{"id": "a", "address": "127.0.0.1:7001", "experts": [{"layer": 0, "expert": 1}], "ready": true},"#
                  + #" {"id": "b", "address": "127.0.0.1:7002", "experts": [{"layer": 0, "expert": 1}, {"layer": 0, "expert": 2}], "ready": true}]}"#)
        #expect(source.refresh()?.replicas(of: expert(1)) == [0, 1])
        try write(#"{"servers": [{"id": "a", "experts": []}]}"#)
        #expect(source.refresh() == nil)
        #expect(source.current().servers.count == 2, "the last good view stays")
        #expect(source.lastError?.description.contains("missing 'address'") == true, "\(String(describing: source.lastError))")
        try write(#"{"servers": [{"id": "a", "address": "nohost", "experts": [], "ready": true}]}"#)
        source.refresh()
        #expect(source.lastError?.description.contains("'nohost' is not host:port") == true)
        #expect { try FileMembership(path: path + ".missing") } throws: { "\($0)".contains("cannot read") }
    }
}

@Suite("Partial combiner: answers into the layer's output in canonical order")
struct PartialCombinerTests {
    /// Values whose sums depend on the order they are added in.
    static func partial(_ token: Int, _ firstExpert: Int, hidden: Int) -> [Float] {
        (0..<hidden).map { h in [1e8, 1, -1e8, 3e-3, 7][(token + firstExpert + h) % 5] * Float(firstExpert + 1) }
    }

    @Test("one answer per token is copied as is; several are added in ascending first expert whatever order they came in",
          arguments: [
            // (token, first expert) per answer, in arrival order; each answer one row.
            [[(0, 2)], [(1, 5)]],
            [[(0, 7), (1, 3)], [(0, 1), (1, 9)], [(0, 4)]],
            [[(1, 6)], [(0, 8)], [(1, 2)], [(0, 0)], [(1, 4)], [(0, 3)]],
          ])
    func canonicalOrder(answers: [[(Int, Int)]]) {
        let tokens = 2, hidden = 5
        var output = [Float](repeating: .nan, count: tokens * hidden)
        output.withUnsafeMutableBufferPointer { out in
            var combiner = PartialCombiner(tokens: tokens, hidden: hidden, output: out.baseAddress!, scratch: .init())
            for answer in answers {
                let sums = answer.flatMap { Self.partial($0.0, $0.1, hidden: hidden) }
                sums.withUnsafeBytes { combiner.take($0, tokens: answer.map(\.0), firstExperts: answer.map { UInt16($0.1) }) }
            }
            combiner.finish()
        }
        for token in 0..<tokens {
            var expected = [Float](repeating: 0, count: hidden)
            for first in answers.flatMap({ $0 }).filter({ $0.0 == token }).map(\.1).sorted() {
                let p = Self.partial(token, first, hidden: hidden)
                for h in 0..<hidden { expected[h] = expected[h] + p[h] }
            }
            #expect(Array(output[(token * hidden)..<((token + 1) * hidden)]).map(\.bitPattern) == expected.map(\.bitPattern), "token \(token)")
        }
    }
}
