import Testing
@testable import Controller

/// `ModelRollout.step`: when a change of spec.model starts a revision, and when an old one may go.
@Suite("Model rollout")
struct ModelRolloutTests {
    static let shards = [RetiringShard(name: "s0", deployment: "p-s0", experts: [0]), RetiringShard(name: "s1", deployment: "p-s1", experts: [1])]

    static func serving(revision: Int = 0, fingerprint: String = "aaaa", path: String = "/m/a", retiring: [RetiringModel] = []) -> ModelRolloutStatus {
        var status = ModelRolloutStatus()
        status.revision = revision
        status.fingerprint = fingerprint
        status.path = path
        status.retiring = retiring
        return status
    }

    static func step(_ previous: ModelRolloutStatus?, fingerprint: String = "aaaa", path: String = "/m/a", newServing: Bool = false,
                     pods: [Int: [ModelRollout.PodUse]] = [:]) -> ModelRollout.Outcome {
        ModelRollout.step(previous: previous, fingerprint: fingerprint, path: path, serving: shards, newRevisionServing: newServing, pods: pods, now: "2026-12-06T00:00:00Z")
    }

    @Test("a pool seen first (or a status from before revisions) is revision 0 of its model, with nothing to retire")
    func firstSight() {
        let fresh = Self.step(nil)
        #expect(fresh.status.revision == 0 && fresh.status.fingerprint == "aaaa" && fresh.status.retiring.isEmpty && fresh.events.isEmpty)
        var legacy = ModelRolloutStatus()
        legacy.revision = 0
        let adopted = Self.step(legacy, fingerprint: "bbbb")
        #expect(adopted.status.fingerprint == "bbbb" && adopted.status.retiring.isEmpty && adopted.events.isEmpty)
    }

    @Test("the same model: nothing changes; a new one: revision n+1, the serving shards retire, one ModelChanged event")
    func change() {
        #expect(Self.step(Self.serving()).status.revision == 0)
        let changed = Self.step(Self.serving(), fingerprint: "bbbb", path: "/m/b")
        #expect(changed.status.revision == 1 && changed.status.path == "/m/b" && changed.status.fingerprint == "bbbb")
        #expect(changed.status.retiring == [RetiringModel(revision: 0, path: "/m/a", shards: Self.shards)])
        #expect(changed.events.map(\.reason) == ["ModelChanged"] && changed.removed.isEmpty)
        #expect(changed.events[0].message.contains("/m/a → /m/b"), "\(changed.events[0].message)")
        #expect(changed.status.lastChangeTime == "2026-12-06T00:00:00Z")
    }

    @Test("an old revision goes only when the new one serves and every ready pod of it has been read with 0 clients",
          arguments: [
              (false, [ModelRollout.PodUse(ready: true, clients: 0)], false, 0),
              (true, [ModelRollout.PodUse(ready: true, clients: 1)], false, 1),
              (true, [ModelRollout.PodUse(ready: true, clients: 0), ModelRollout.PodUse(ready: true, clients: nil)], false, -1),
              (true, [ModelRollout.PodUse(ready: true, clients: 0), ModelRollout.PodUse(ready: false, clients: nil)], true, 0),
              (true, [], true, 0),
              (true, [ModelRollout.PodUse(ready: true, clients: 2), ModelRollout.PodUse(ready: true, clients: 3)], false, 5),
          ])
    func retire(newServing: Bool, pods: [ModelRollout.PodUse], removed: Bool, clients: Int) {
        let previous = Self.serving(revision: 1, fingerprint: "bbbb", path: "/m/b", retiring: [RetiringModel(revision: 0, path: "/m/a", shards: Self.shards)])
        let outcome = Self.step(previous, fingerprint: "bbbb", path: "/m/b", newServing: newServing, pods: [0: pods])
        #expect(outcome.removed == (removed ? [0] : []))
        #expect(outcome.status.retiring.isEmpty == removed)
        #expect(outcome.events.map(\.reason) == (removed ? ["ModelRolledOut"] : []))
        if !removed { #expect(outcome.status.retiring.first?.clients == clients) }
        #expect(outcome.status.reason.contains(removed ? "revision 1 serves /m/b" : newServing ? "waiting for workers to move" : "coming up"), "\(outcome.status.reason)")
    }

    @Test("editing spec.model again and again keeps at most two older revisions: the oldest goes at once, said by an event")
    func pileUpIsBounded() {
        var status = Self.serving()
        var removed: [Int] = []
        var reasons: [String] = []
        for (index, fingerprint) in ["b", "c", "d"].enumerated() {
            let outcome = Self.step(status, fingerprint: fingerprint, path: "/m/\(fingerprint)")
            status = outcome.status
            removed += outcome.removed
            reasons += outcome.events.map(\.reason)
            #expect(status.revision == index + 1)
        }
        #expect(status.retiring.map(\.revision) == [1, 2])
        #expect(removed == [0])
        #expect(reasons == ["ModelChanged", "ModelChanged", "ModelChanged", "ModelRevisionDropped"])
    }

    @Test("eaas_clients is read from a pod's metrics; absent or not a count: unknown")
    func clientsGauge() throws {
        #expect(try #require(PodCounters(prometheusText: "eaas_expert_tokens_total 5\neaas_clients 3\n")).clients == 3)
        #expect(try #require(PodCounters(prometheusText: "eaas_expert_tokens_total 5\neaas_clients 2.0\n")).clients == 2)
        #expect(try #require(PodCounters(prometheusText: "eaas_expert_tokens_total 5\n")).clients == nil)
        #expect(try #require(PodCounters(prometheusText: "eaas_expert_tokens_total 5\neaas_clients -1\n")).clients == nil)
        #expect(try #require(PodCounters(prometheusText: "eaas_expert_tokens_total 5\neaas_clients NaN\n")).clients == nil)
    }
}
