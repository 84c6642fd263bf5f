import AttentionWorker
import Controller
import Foundation
import JSON
import Kube
import KubeTestServer
import Logging
import MoE
import Testing
import Transport

/// Rollouts while workers generate, end to end: the local runtime runs real `eaas expert-pod`
/// processes, and attention workers find them through the API (EndpointSlices and the shard
/// plan), each admitting only pods whose handshake names its own model. A new grouping of experts
/// and a new checkpoint: the tokens are those of a run without the change, and nothing fails.
extension OperatorScenarioTests {
    /// Two checkpoints of one shape (Qwen3-MoE, 8 experts top-2, hidden 64, 2 layers) with
    /// different weights: a step that combined them would change the tokens.
    static let revisionCheckpoints: [String] = [UInt64(21), 22].map { seed in
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("eaas-rollout-model-\(seed)-\(getpid())").path
        var spec = RandomModelSpec(architecture: .qwen3Moe, layers: 2, experts: 8, topK: 2, hidden: 64)
        spec.dtype = .f32
        spec.expertFFN = 32
        spec.vocab = 256
        spec.seed = seed
        spec.weightStd = 0.2
        _ = try! RandomModel.write(spec, to: path)
        return path
    }

    /// One wave of greedy requests; the same wave always gives the same tokens on the same pods.
    static let wave: [GenerationRequest] = (0..<4).map { i in
        GenerationRequest(prompt: (0..<(5 + i)).map { (11 * $0 + 5 * i) % 250 + 3 }, maxTokens: 24 + 4 * i, sampling: .greedy, ignoreEOS: true)
    }

    /// An attention worker of the checkpoint in `model`: a membership of the pool verified by
    /// handshake with that checkpoint's digest, and an engine on it, started once every expert
    /// has a pod of that model.
    final class PoolWorker: @unchecked Sendable {
        let membership: KubernetesMembership
        let engine: GenerationEngine
        let config: ModelConfig

        init(rig: Rig, model: String, token: [UInt8], clientID: UInt64) async throws {
            var dispatcher = Dispatcher.Configuration(poolToken: token, clientID: clientID)
            dispatcher.backend = .tcp
            dispatcher.modelDigest = try ModelDigest.compute(directory: model).bytes
            let config = try ModelConfig.load(directory: model)
            self.config = config
            let logger = { var logger = Logger(label: "worker"); logger.logLevel = .error; return logger }()
            let membership = KubernetesMembership(client: rig.client, pool: "tiny", namespace: OperatorScenarioTests.namespace, layers: config.moeLayers,
                                                  verify: KubernetesMembership.handshakeVerifier(configuration: dispatcher, logger: logger), logger: logger)
            self.membership = membership
            #expect(await membership.start())
            try await OperatorScenarioTests.until("every expert has a pod of \(URL(fileURLWithPath: model).lastPathComponent)", timeout: .seconds(60)) {
                ExpertPods.missingExperts(config: config, view: membership.current()).isEmpty
            }
            engine = try GenerationEngine(modelDirectory: model, experts: .remote(membership: membership, dispatcher: dispatcher, wireDType: .bf16))
            engine.start()
        }

        /// Runs `requests` to the end on the started engine: each one's tokens, or why it failed.
        func run(_ requests: [GenerationRequest]) async throws -> [Result<[Int], GenerationFailure>] {
            let wave = Wave(count: requests.count)
            return try await withCheckedThrowingContinuation { continuation in
                wave.whenDone { continuation.resume(returning: $0) }
                do {
                    _ = try engine.submit(requests) { index, event in wave.record(event, at: index) }
                } catch {
                    wave.abandon()
                    continuation.resume(throwing: error)
                }
            }
        }

        /// Whether every expert has a ready pod of this worker's model.
        var hostsEveryExpert: Bool { ExpertPods.missingExperts(config: config, view: membership.current()).isEmpty }

        func stop() {
            engine.shutdown(drain: true)
            membership.stop()
        }
    }

    struct GenerationFailure: Error, Equatable { let reason: String }

    /// The pool token of the real-pod scenarios (pods and workers read it from Secret rollout-token).
    static let realPodToken = Array("rollout-under-load-token-0123456789abcdef".utf8)

    /// A rig whose pods are `eaas expert-pod` processes, its controller running, the token Secret
    /// made; and pool "tiny" of `model` (8 experts, one replica per shard) with `change` applied.
    static func realPodRig(model: String, _ change: (inout JSONValue) -> Void) async throws -> Rig {
        let rig = try await Rig.start(launcher: ProcessLauncher(executable: eaasBinary))
        let controller = rig.controller()
        rig.track(Task { try? await controller.run() })
        do {
            _ = try await rig.client.create(.secrets, KubeObject(.secrets, name: "rollout-token", namespace: namespace,
                                                                 fields: ["data": ["token": .string(Data(realPodToken).base64EncodedString())]]))
            var pool = Self.pool(name: "tiny", minReplicas: 1, maxReplicas: 1)
            pool.json[path: ["spec", "model"]] = ["path": .string(model), "experts": 8]
            pool.json[path: ["spec", "poolTokenSecret"]] = ["name": "rollout-token"]
            var spec = pool.json["spec"] ?? [:]
            change(&spec)
            pool.json["spec"] = spec
            _ = try await rig.client.create(ExpertPoolCRD.resource, pool, namespace: namespace)
        } catch {
            await rig.stop()
            throw error
        }
        return rig
    }

    @Test("spec.model changed while two workers generate: each worker's tokens equal its model's run without the change, nothing fails, and revision 0 goes only once its worker has left")
    func modelChangeUnderLoad() async throws {
        let (modelA, modelB) = (Self.revisionCheckpoints[0], Self.revisionCheckpoints[1])
        let rig = try await Self.realPodRig(model: modelA) { $0["shards"] = ["expertsPerShard": 4] }
        let token = Self.realPodToken
        do {
            try await Self.until("revision 0's two shards serve", timeout: .seconds(60)) {
                rig.status()?.model?.revision == 0 && rig.status()?.readyReplicas == 2
            }

            // Worker A on revision 0: a first wave is the reference for every later one.
            let workerA = try await PoolWorker(rig: rig, model: modelA, token: token, clientID: 0xA000)
            let expectedA = try await workerA.run(Self.wave)
            #expect(expectedA.allSatisfy { (try? $0.get())?.isEmpty == false }, "\(expectedA)")

            // Worker A keeps generating, wave after wave, through everything below.
            let waves = WaveLoop(workerA, wave: Self.wave)

            _ = try await rig.editPool { $0[path: ["model", "path"]] = .string(modelB) }
            // Worker B admits only revision 1's pods (revision 0's handshake names checkpoint A).
            let workerB = try await PoolWorker(rig: rig, model: modelB, token: token, clientID: 0xB000)
            let duringB = try await workerB.run(Self.wave)
            let wavesBeforeBFinished = waves.count
            // Revision 0 stays while worker A is connected to it, and the status says so.
            try await Self.until("the status counts revision 0's worker") {
                #expect(workerA.hostsEveryExpert, "worker A lost the last pod of an expert: \(workerA.membership.current().servers.map(\.id))")
                return (rig.status()?.model?.retiring.first?.clients ?? 0) >= 1 && rig.status()?.condition("Progressing")?.reason == "ModelRollingOut"
            }
            #expect(rig.server.object(.deployments, "tiny-s0", namespace: Self.namespace) != nil)
            #expect(rig.server.object(.deployments, "tiny-s1", namespace: Self.namespace) != nil)
            // Worker A has generated beside worker B; then it stops (its last wave finishes).
            try await Self.until("worker A completes a wave after worker B's", timeout: .seconds(60)) {
                #expect(workerA.hostsEveryExpert, "worker A lost the last pod of an expert: \(workerA.membership.current().servers.map(\.id))")
                return waves.count > wavesBeforeBFinished
            }
            await waves.stop()
            workerA.stop()
            let left = ContinuousClock.now

            try await Self.until("revision 0 removed once its worker left", timeout: .seconds(60)) {
                rig.server.object(.deployments, "tiny-s0", namespace: Self.namespace) == nil
                    && rig.server.object(.deployments, "tiny-s1", namespace: Self.namespace) == nil
            }
            print("model rollout under load: worker A ran \(waves.count) waves of \(Self.wave.count) requests during it (\(wavesBeforeBFinished) before worker B's finished); revision 0 went \(ContinuousClock.now - left) after worker A left")
            // Revision 1 alone: its run without the change, the reference for worker B's wave during it.
            let expectedB = try await workerB.run(Self.wave)
            workerB.stop()

            #expect(duringB == expectedB, "worker B's tokens during the rollout differ from its run after it")
            #expect(expectedA != expectedB, "the two checkpoints give the same tokens: the comparison would prove nothing")
            for (index, results) in waves.all.enumerated() {
                #expect(results == expectedA, "worker A's wave \(index) differs from its run before the change")
            }
            #expect(workerA.engine.stats.failedRequests == 0 && workerB.engine.stats.failedRequests == 0)
            #expect(rig.status()?.model?.revision == 1 && rig.status()?.model?.retiring.isEmpty == true)
        } catch {
            await rig.stop()
            throw error
        }
        await rig.stop()
    }

    @Test("loadAware placement switched on while a worker generates: the new grouping comes up beside the old, the worker moves over, its tokens equal its run without the change, nothing fails")
    func placementChangeUnderLoad() async throws {
        let model = Self.revisionCheckpoints[0]
        // spec.shards puts all eight experts on one shard; a pod holds at most four in a planned
        // grouping, so the first plan from measured load splits them in two (the target is far
        // above this load: every expert is cold, one replica each).
        let rig = try await Self.realPodRig(model: model) { spec in
            spec["shards"] = ["expertsPerShard": 8]
            spec[path: ["autoscaling", "target"]] = 1_000_000
            spec["placement"] = ["mode": "static", "maxExpertsPerShard": 4, "minImprovement": 0.2, "minIntervalSeconds": 0, "windowSeconds": 2]
        }
        let token = Self.realPodToken
        do {
            try await Self.until("the one shard of spec.shards serves", timeout: .seconds(60)) { rig.status()?.readyReplicas == 1 }

            let worker = try await PoolWorker(rig: rig, model: model, token: token, clientID: 0xC000)
            let expected = try await worker.run(Self.wave)
            #expect(expected.allSatisfy { (try? $0.get())?.isEmpty == false }, "\(expected)")
            let waves = WaveLoop(worker, wave: Self.wave)

            _ = try await rig.editPool { $0[path: ["placement", "mode"]] = "loadAware" }
            var sawBoth = false
            try await Self.until("a new grouping rolled out and the old shard removed", timeout: .seconds(90)) {
                let servers = worker.membership.current().servers.filter(\.ready)
                let names = Set(servers.map { KubernetesMembership.deployment(ofPod: $0.id) })
                if names.contains("tiny-s0") && names.contains(where: { $0.hasPrefix("tiny-r1-") }) { sawBoth = true }
                let hosted = Set(servers.flatMap(\.experts).map(\.expert))
                #expect(hosted == Set(0..<8), "an expert lost its last pod: \(servers.map(\.id))")
                return (rig.status()?.placement?.revision ?? 0) >= 1 && rig.server.object(.deployments, "tiny-s0", namespace: Self.namespace) == nil
            }
            let placement = try #require(rig.status()?.placement)
            #expect(placement.shards.count == 2 && placement.shards.allSatisfy { $0.experts.count == 4 }, "\(placement.shards)")
            #expect(sawBoth, "the worker saw the new shards' pods beside the old one")
            // The worker runs on the new grouping alone for at least one whole wave.
            let removed = waves.count
            try await Self.until("a wave on the new grouping alone", timeout: .seconds(60)) { waves.count >= removed + 2 }
            await waves.stop()
            worker.stop()
            print("placement change under load: \(waves.count) waves of \(Self.wave.count) requests, \(removed) before the old shard was removed; new shards \(placement.shards.map(\.experts))")

            for (index, results) in waves.all.enumerated() {
                #expect(results == expected, "wave \(index) differs from the run before the change")
            }
            #expect(worker.engine.stats.failedRequests == 0)
        } catch {
            await rig.stop()
            throw error
        }
        await rig.stop()
    }
}

/// A worker running the same wave again and again until stopped; each wave's results (nil for
/// one that could not be submitted, which ends the loop).
final class WaveLoop: @unchecked Sendable {
    typealias Results = [Result<[Int], OperatorScenarioTests.GenerationFailure>]
    private let lock = NSLock()
    private var waves: [Results?] = []
    private var stopping = false
    private var task: Task<Void, Never>?

    init(_ worker: OperatorScenarioTests.PoolWorker, wave: [GenerationRequest]) {
        task = Task { [self] in
            while !lock.withLock({ stopping }) {
                let results = try? await worker.run(wave)
                lock.withLock { waves.append(results) }
                if results == nil { break }
            }
        }
    }

    var count: Int { lock.withLock { waves.count } }
    var all: [Results?] { lock.withLock { waves } }

    /// Lets the wave in progress finish, then returns.
    func stop() async {
        let task = lock.withLock { stopping = true; return self.task }
        await task?.value
    }
}

/// The events of one wave of requests, gathered from the engine's thread; calls back once every
/// request has finished or failed.
final class Wave: @unchecked Sendable {
    private let lock = NSLock()
    private var tokens: [[Int]]
    private var outcomes: [Result<[Int], OperatorScenarioTests.GenerationFailure>?]
    private var done: (([Result<[Int], OperatorScenarioTests.GenerationFailure>]) -> Void)?

    init(count: Int) {
        tokens = Array(repeating: [], count: count)
        outcomes = Array(repeating: nil, count: count)
    }

    func whenDone(_ callback: @escaping ([Result<[Int], OperatorScenarioTests.GenerationFailure>]) -> Void) { lock.withLock { done = callback } }

    /// Submission failed: nobody will be called back.
    func abandon() { lock.withLock { done = nil } }

    func record(_ event: GenerationEvent, at index: Int) {
        let finished: (([Result<[Int], OperatorScenarioTests.GenerationFailure>]) -> Void, [Result<[Int], OperatorScenarioTests.GenerationFailure>])? = lock.withLock {
            switch event {
            case .token(let token): tokens[index].append(token)
            case .finished: outcomes[index] = .success(tokens[index])
            case .failed(let reason): outcomes[index] = .failure(.init(reason: reason.description))
            }
            guard let callback = done, outcomes.allSatisfy({ $0 != nil }) else { return nil }
            done = nil
            return (callback, outcomes.compactMap { $0 })
        }
        if let (callback, results) = finished { callback(results) }
    }
}
