import Controller
import Foundation
import JSON
import Kube
import KubeTestServer
import Logging
import Testing

/// Rollouts that change what serves the pool without a gap: a new grouping of experts
/// (load-aware placement) and a new checkpoint (spec.model) both come up beside what runs, and
/// what runs goes only once nothing needs it. Part of the operator suite (its rig, and run one
/// at a time with its other scenarios: each runs a runtime and a controller).
extension OperatorScenarioTests {
    @Test("loadAware placement: two hot experts that spec.shards put together get shards of their own, brought up beside the old ones, which go only once the new serve")
    func loadAwarePlacementRollsOut() async throws {
        let rig = try await Rig.start()
        let controller = rig.controller()
        rig.track(Task { try? await controller.run() })
        do {
            var pool = Self.pool(name: "tiny")
            pool.json[path: ["spec", "model", "experts"]] = 6
            pool.json[path: ["spec", "shards"]] = ["expertsPerShard": 3]
            pool.json[path: ["spec", "placement"]] = ["mode": "loadAware", "maxExpertsPerShard": 3, "minImprovement": 0.2,
                                                      "minIntervalSeconds": 0, "windowSeconds": 2]
            rig.load.setExperts([0: 900, 1: 900, 2: 10, 3: 5])
            _ = try await rig.client.create(ExpertPoolCRD.resource, pool, namespace: Self.namespace)
            try await Self.until("revision 0 serves spec.shards") { rig.status()?.placement?.shards.map(\.name) == ["s0", "s1"] && rig.status()?.readyReplicas ?? 0 >= 2 }
            let membership = KubernetesMembership(client: rig.client, pool: "tiny", namespace: Self.namespace, layers: [1], logger: Logger(label: "membership"))
            #expect(await membership.start())
            defer { membership.stop() }

            // Scraped per-expert load: s0 holds 1810 tokens/s at 3 replicas at most (603 each); the
            // plan gives experts 0 and 1 shards of their own (300 each at 3 replicas). 900 against a
            // target of 100 asks for 9 replicas, held at replicas.max, 3. The margin is wide on
            // purpose: while s0 scales up, a pod that has joined (and taken its share) but has not
            // been scraped twice is missing from the sum, which then reads a third or two thirds
            // low; 290 once read as ≤ 200 on a loaded machine and planned 2.
            try await Self.until("a new grouping", timeout: .seconds(45)) { (rig.status()?.placement?.revision ?? 0) >= 1 }
            let placement = try #require(rig.status()?.placement)
            #expect(placement.shards.map(\.experts) == [[0], [1], [2], [3, 4, 5]], "\(placement.shards)")
            #expect(placement.shards.map(\.replicas) == [3, 3, 1, 1])
            #expect(placement.reason.contains("peak load per replica"), "\(placement.reason)")
            #expect(!placement.lastChangeTime.isEmpty)
            try await Self.until("a Replanned event") { try await !rig.events(reason: "Replanned").isEmpty }

            // Make before break: until the new shards serve, every expert keeps a ready pod; the old go after.
            var sawBoth = false
            try await Self.until("the old grouping removed", timeout: .seconds(60)) {
                let names = Set(membership.current().servers.map { KubernetesMembership.deployment(ofPod: $0.id) })
                if names.contains("tiny-s0") && names.contains(where: { $0.hasPrefix("tiny-r1-") }) { sawBoth = true }
                let hosted = Set(membership.current().servers.filter(\.ready).flatMap(\.experts).map(\.expert))
                #expect(hosted.isSuperset(of: [0, 1, 2, 3, 4, 5]) || membership.current().servers.isEmpty, "an expert lost its last pod: \(hosted) in \(membership.current().servers.map { ($0.id, $0.ready) })")
                return rig.server.object(.deployments, "tiny-s0", namespace: Self.namespace) == nil
                    && rig.server.object(.deployments, "tiny-s1", namespace: Self.namespace) == nil
            }
            #expect(sawBoth, "workers saw the new shards' pods beside the old ones")
            try await Self.until("a PlacementRolledOut event") { try await !rig.events(reason: "PlacementRolledOut").isEmpty }
            try await Self.until("the new shards scale to their load") {
                rig.replicas("tiny-r1-0") == 3 && rig.replicas("tiny-r1-1") == 3 && rig.replicas("tiny-r1-2") == 1
            }
            // The status catches up with the deletions on the controller's next write.
            try await Self.until("the status shows only the new grouping") {
                rig.status()?.placement?.retiring.isEmpty == true && rig.status()?.shards.map(\.name) == ["r1-0", "r1-1", "r1-2", "r1-3"]
            }
            // The same load does not regroup again: the plan for it is the one running.
            try await Task.sleep(for: .seconds(3))
            #expect(rig.status()?.placement?.revision == 1)
        } catch {
            await rig.stop()
            throw error
        }
        await rig.stop()
    }

    @Test("a change of spec.model brings revision 1's Deployments up beside revision 0's, which keep the old model and serve their workers until none is connected")
    func modelChangeRollsOutBesideTheOld() async throws {
        let rig = try await Rig.start()
        let controller = rig.controller()
        rig.track(Task { try? await controller.run() })
        do {
            _ = try await rig.client.create(ExpertPoolCRD.resource, Self.pool(name: "tiny"), namespace: Self.namespace)
            try await Self.until("revision 0 serves") {
                rig.status()?.model?.revision == 0 && rig.status()?.readyReplicas == 2 && rig.status()?.model?.path == "/models/tiny"
            }
            let membership = KubernetesMembership(client: rig.client, pool: "tiny", namespace: Self.namespace, layers: [1], logger: Logger(label: "membership"))
            #expect(await membership.start())
            defer { membership.stop() }
            // An attention worker of the old model is connected to every pod.
            let oldPods = try await rig.client.list(.pods, namespace: Self.namespace).items.compactMap(\.name)
            for pod in oldPods { rig.load.setClients(pod, 1) }

            _ = try await rig.editPool { $0[path: ["model", "path"]] = "/models/tiny-b" }
            try await Self.until("revision 1's shards serve beside revision 0's", timeout: .seconds(45)) {
                let names = Set(membership.current().servers.filter(\.ready).map { KubernetesMembership.deployment(ofPod: $0.id) })
                return names.isSuperset(of: ["tiny-s0", "tiny-s1", "tiny-s0-m1", "tiny-s1-m1"])
            }
            let status = try #require(rig.status()?.model)
            #expect(status.revision == 1 && status.path == "/models/tiny-b")
            #expect(status.retiring.map(\.revision) == [0] && status.retiring.first?.shards.map(\.deployment) == ["tiny-s0", "tiny-s1"], "\(status.retiring)")
            #expect(try await !rig.events(reason: "ModelChanged").isEmpty)
            func modelArgument(_ deployment: String) -> String? {
                guard let args = rig.server.object(.deployments, deployment, namespace: Self.namespace)?
                    .json[path: ["spec", "template", "spec", "containers"]]?.array?.first?["args"]?.array?.compactMap(\.string),
                    let index = args.firstIndex(of: "--model") else { return nil }
                return args[index + 1]
            }
            // The old Deployments were left as they were: their pods still serve the old checkpoint.
            #expect(modelArgument("tiny-s0") == "/models/tiny" && modelArgument("tiny-s1") == "/models/tiny")
            #expect(modelArgument("tiny-s0-m1") == "/models/tiny-b" && modelArgument("tiny-s1-m1") == "/models/tiny-b")
            // The two revisions' selectors are apart in the new direction: revision 1's selects only its own pods.
            let selector = rig.server.object(.deployments, "tiny-s0-m1", namespace: Self.namespace)?.json[path: ["spec", "selector", "matchLabels"]]
            #expect(selector?[PoolLabels.modelRevision]?.string == "1")

            // While a worker is connected to the old pods they stay, and the status says why.
            try await Self.until("the status counts the old revision's workers") {
                rig.status()?.model?.retiring.first?.clients == 2 && rig.status()?.condition("Progressing")?.reason == "ModelRollingOut"
                    && rig.status()?.model?.reason == "revision 1 serves; waiting for workers to move (2 on revision 0)"
            }
            try await Task.sleep(for: .seconds(2))
            #expect(rig.server.object(.deployments, "tiny-s0", namespace: Self.namespace) != nil)
            #expect(rig.server.object(.deployments, "tiny-s1", namespace: Self.namespace) != nil)

            // The old workers have moved: the old revision goes, and no expert was ever without a ready pod.
            for pod in oldPods { rig.load.setClients(pod, 0) }
            try await Self.until("revision 0 removed", timeout: .seconds(30)) {
                let hosted = Set(membership.current().servers.filter(\.ready).flatMap(\.experts).map(\.expert))
                #expect(hosted.isSuperset(of: [0, 1]), "an expert lost its last pod: \(membership.current().servers.map { ($0.id, $0.ready) })")
                return rig.server.object(.deployments, "tiny-s0", namespace: Self.namespace) == nil
                    && rig.server.object(.deployments, "tiny-s1", namespace: Self.namespace) == nil
            }
            try await Self.until("a ModelRolledOut event and the status caught up") {
                try await !rig.events(reason: "ModelRolledOut").isEmpty && rig.status()?.model?.retiring.isEmpty == true
                    && rig.status()?.condition("Progressing")?.status == .false
            }
            #expect(rig.status()?.shards.map(\.name) == ["s0", "s1"] && rig.status()?.readyReplicas == 2)
        } catch {
            await rig.stop()
            throw error
        }
        await rig.stop()
    }
}
