import AttentionWorker
import Controller
import Foundation
import JSON
import Kube
import KubeTestServer
import ServiceLifecycle

/// `eaas up`'s synthetic load: requests arrive at the current phase's rate (evenly spaced), each
/// generating `requestTokens` tokens, so the load in tokens/s is the same on any machine that keeps
/// up. At most `maxInFlight` run at once; an arrival beyond that is shed (counted, not sent), as a
/// load balancer in front of a full worker would. With `chatPrompts` (a model with a tokenizer and
/// a chat template) each request is one of those real chat prompts and ends at the model's end of
/// turn or at `requestTokens`; otherwise it is 8 random ids generating exactly `requestTokens`.
final class SyntheticLoad: Service, @unchecked Sendable {
    let engine: GenerationEngine
    let phases: [(start: Double, rate: Double)]
    let requestTokens: Int
    let vocabulary: Int
    let maxInFlight: Int
    let chatPrompts: [[Int]]
    let stopTokenIDs: Set<Int>
    private let lock = NSLock()
    private var counts = (tokens: 0, finished: 0, failed: 0, shed: 0, inFlight: 0)
    private var failures: [String] = []
    private var started = ContinuousClock.now

    init(engine: GenerationEngine, phases: [(start: Double, rate: Double)], requestTokens: Int, vocabulary: Int, maxInFlight: Int,
         chatPrompts: [[Int]] = [], stopTokenIDs: Set<Int> = []) {
        self.chatPrompts = chatPrompts
        self.stopTokenIDs = stopTokenIDs
        self.engine = engine
        self.phases = phases
        self.requestTokens = requestTokens
        self.vocabulary = vocabulary
        self.maxInFlight = maxInFlight
    }

    /// Tokens generated, requests finished, failed, shed, and running now.
    var totals: (tokens: Int, finished: Int, failed: Int, shed: Int, inFlight: Int) { lock.withLock { counts } }
    /// The first few failure messages.
    var failureMessages: [String] { lock.withLock { failures } }

    /// Requests per second the current phase asks for.
    var rate: Double {
        let seconds = (ContinuousClock.now - lock.withLock { started }).seconds
        return phases.last { $0.start <= seconds }?.rate ?? 0
    }

    func run() async throws {
        lock.withLock { started = .now }
        let stopping = ManagedFlag()
        await withGracefulShutdownHandler {
            // On shutdown arrivals stop and the requests already sent finish (the engine stops after this).
            await withTaskGroup(of: Void.self) { group in
                var next = ContinuousClock.now
                while !Task.isCancelled, !stopping.isSet {
                    let rate = self.rate
                    guard rate > 0 else {
                        try? await Task.sleep(for: .milliseconds(100))
                        next = .now
                        continue
                    }
                    next = max(next + .seconds(1 / rate), .now - .seconds(1))
                    while ContinuousClock.now < next, !stopping.isSet { try? await Task.sleep(for: min(.milliseconds(50), next - .now)) }
                    if stopping.isSet || Task.isCancelled { break }
                    let admitted: Bool = self.lock.withLock {
                        guard self.counts.inFlight < self.maxInFlight else {
                            self.counts.shed += 1
                            return false
                        }
                        self.counts.inFlight += 1
                        return true
                    }
                    guard admitted else { continue }
                    let prompt = self.chatPrompts.randomElement() ?? (0..<8).map { _ in Int.random(in: 0..<self.vocabulary) }
                    group.addTask {
                        await self.one(prompt: prompt)
                        self.lock.withLock { self.counts.inFlight -= 1 }
                    }
                }
            }
        } onGracefulShutdown: {
            _ = stopping.setOnce()
        }
    }

    /// One request to its end; a request the engine refuses or fails counts as failed.
    private func one(prompt: [Int]) async {
        let request = chatPrompts.isEmpty
            ? GenerationRequest(prompt: prompt, maxTokens: requestTokens, ignoreEOS: true)
            : GenerationRequest(prompt: prompt, maxTokens: requestTokens, sampling: SamplingParameters(temperature: 0.7, topP: 0.95, seed: UInt64.random(in: 0...UInt64.max)),
                                stopTokenIDs: stopTokenIDs)
        let events: AsyncStream<GenerationEvent>
        do { events = try engine.stream(request).events } catch {
            record(failure: "refused: \(error)")
            return
        }
        for await event in events {
            switch event {
            case .token: lock.withLock { counts.tokens += 1 }
            case .finished: lock.withLock { counts.finished += 1 }
            case .failed(let failure): record(failure: failure.description)
            }
        }
    }

    private func record(failure: String) {
        lock.withLock {
            counts.failed += 1
            if failures.count < 5 { failures.append(failure) }
        }
    }
}

/// The live table of `eaas up`: per shard replicas (desired), ready, load, and the worker's tokens/s.
final class UpTable: Service, @unchecked Sendable {
    let server: TestAPIServer
    let pool: String
    let namespace: String
    let load: SyntheticLoad
    let redraw: Bool
    let directory: String
    private var lastTokens = 0
    private var lastAt = ContinuousClock.now

    init(server: TestAPIServer, pool: String, namespace: String, load: SyntheticLoad, redraw: Bool, directory: String) {
        self.server = server
        self.pool = pool
        self.namespace = namespace
        self.load = load
        self.redraw = redraw
        self.directory = directory
    }

    func run() async throws {
        let start = ContinuousClock.now
        var tick = 0
        while !Task.isCancelled {
            do { try await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(1)) } } catch { return }
            tick += 1
            guard redraw || tick % 5 == 0 else { continue }
            let elapsed = Int((ContinuousClock.now - start).components.seconds)
            let text = render(elapsed: elapsed)
            FileHandle.standardOutput.write(Data(((redraw ? "\u{1B}[H\u{1B}[2J" : "") + text).utf8))
        }
    }

    func render(elapsed: Int) -> String {
        let totals = load.totals
        let now = ContinuousClock.now
        let seconds = max(1e-3, (now - lastAt).seconds)
        let rate = Double(totals.tokens - lastTokens) / seconds
        lastTokens = totals.tokens
        lastAt = now
        var lines = ["t=\(elapsed)s  load: \(String(format: "%g", load.rate)) requests/s  worker: \(Int(rate)) tokens/s  requests: \(totals.finished) done, \(totals.inFlight) running, \(totals.failed) failed, \(totals.shed) shed"]
        lines.append("SHARD  EXPERTS  REPLICAS  READY  LOAD(tokens/s)")
        let status = server.object(ExpertPoolCRD.resource, pool, namespace: namespace)?.json["status"].flatMap { try? ExpertPoolStatus(specJSON: $0, path: "status") }
        for shard in status?.shards ?? [] {
            lines.append([shard.name.padding(toLength: 6, withPad: " ", startingAt: 0), shard.experts.padding(toLength: 8, withPad: " ", startingAt: 0),
                          "\(shard.replicas)/\(shard.desiredReplicas)".padding(toLength: 9, withPad: " ", startingAt: 0),
                          "\(shard.readyReplicas)".padding(toLength: 6, withPad: " ", startingAt: 0), String(format: "%.0f", shard.load)].joined(separator: " "))
        }
        if let limited = status?.condition("ScalingLimited"), limited.status == .true { lines.append("ScalingLimited: \(limited.message)") }
        return lines.joined(separator: "\n") + "\n" + (redraw ? "" : "\n")
    }

    func printSummary() {
        let totals = load.totals
        var text = "eaas up stopped: \(totals.finished) requests done, \(totals.failed) failed, \(totals.shed) shed, \(totals.tokens) tokens\n"
        for message in load.failureMessages { text += "  failed: \(message)\n" }
        FileHandle.standardOutput.write(Data(text.utf8))
    }
}

/// The questions `eaas up`'s load asks a model that speaks chat.
enum UpQuestions {
    static let all = [
        "What is the capital of France?", "Name three primary colors.", "Write a haiku about the sea.",
        "How many legs does a spider have?", "Explain what a mixture of experts is in one sentence.",
        "What is 12 times 7?", "Give me a short tip for learning to cook.", "Which planet is closest to the sun?",
        "Translate 'good morning' into Spanish.", "What does a kubelet do?",
    ]
}
