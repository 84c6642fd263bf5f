import AttentionWorker
import Controller
import Foundation
import JSON
import Kube
import KubeTestServer
import MoE
import ServiceLifecycle

/// `eaas up`'s and `eaas bench elastic`'s synthetic load: requests arrive at the trace's rate (evenly spaced), each
/// generating `requestTokens` tokens, so the load in tokens/s is the same on any machine that keeps
/// up. At most `maxInFlight` run at once; an arrival beyond that is shed (counted, not sent), as a
/// load balancer in front of a full worker would. With `chatPrompts` (a model with a tokenizer and
/// a chat template) each request is one of those real chat prompts and ends at the model's end of
/// turn or at `requestTokens`; otherwise it is 8 random ids generating exactly `requestTokens`.
final class SyntheticLoad: Service, @unchecked Sendable {
    let engine: GenerationEngine
    let trace: LoadTrace
    let requestTokens: Int
    let vocabulary: Int
    let maxInFlight: Int
    let chatPrompts: [[Int]]
    let stopTokenIDs: Set<Int>
    /// A model with topics: prompts drawn from the trace's topic weights, else a drifting Zipf mix.
    let topics: TopicMix?
    private let lock = NSLock()
    private var counts = (tokens: 0, finished: 0, failed: 0, shed: 0, inFlight: 0)
    private var failures: [String] = []
    private var started = ContinuousClock.now
    /// Recent finished requests: when, time to first token, mean time per later token (seconds).
    private var latencies: [(at: ContinuousClock.Instant, ttft: Double, tpot: Double?)] = []
    static let latencyWindow: Duration = .seconds(30)
    /// Every finished request of the run (up to a million): seconds after the start it was sent,
    /// time to first token, mean time per later token (seconds); shed requests as `shedAt`.
    private var finishedRequests: [FinishedRequest] = []
    private var shedAt: [Double] = []

    /// One request's outcome, for SLO accounting.
    struct FinishedRequest {
        var sentAt: Double
        var ttft: Double
        var tpot: Double?
    }

    /// Whether arrivals stop at the trace's end (`run` returns once the requests sent have
    /// finished) rather than at graceful shutdown.
    let endsWithTrace: Bool

    init(engine: GenerationEngine, trace: LoadTrace, requestTokens: Int, vocabulary: Int, maxInFlight: Int,
         chatPrompts: [[Int]] = [], stopTokenIDs: Set<Int> = [], topics: TopicMix? = nil, endsWithTrace: Bool = false) {
        self.endsWithTrace = endsWithTrace
        self.topics = topics
        self.chatPrompts = chatPrompts
        self.stopTokenIDs = stopTokenIDs
        self.engine = engine
        self.trace = trace
        self.requestTokens = requestTokens
        self.vocabulary = vocabulary
        self.maxInFlight = maxInFlight
    }

    /// Tokens generated, requests finished, failed, shed, and running now.
    var totals: (tokens: Int, finished: Int, failed: Int, shed: Int, inFlight: Int) { lock.withLock { counts } }
    /// The first few failure messages.
    var failureMessages: [String] { lock.withLock { failures } }

    /// p50 and p99 of time to first token and of time per output token (milliseconds) over the
    /// requests that finished in the last 30 s; nil when none did.
    var recentLatency: (ttft: (p50: Double, p99: Double), tpot: (p50: Double, p99: Double)?)? {
        let recent = lock.withLock {
            latencies.removeAll { ContinuousClock.now - $0.at > Self.latencyWindow }
            return latencies
        }
        guard !recent.isEmpty else { return nil }
        func percentiles(_ values: [Double]) -> (p50: Double, p99: Double) {
            let sorted = values.sorted()
            return (sorted[min(sorted.count - 1, sorted.count / 2)] * 1000, sorted[min(sorted.count - 1, Int(Double(sorted.count) * 0.99))] * 1000)
        }
        let tpots = recent.compactMap(\.tpot)
        return (percentiles(recent.map(\.ttft)), tpots.isEmpty ? nil : percentiles(tpots))
    }

    /// Seconds since the load started.
    var elapsed: Double { (ContinuousClock.now - lock.withLock { started }).seconds }

    /// Requests per second the trace asks for now.
    var rate: Double { trace.rate(at: elapsed) }

    /// The finished requests and the times of shed arrivals, so far.
    var outcomes: (finished: [FinishedRequest], shed: [Double]) { lock.withLock { (finishedRequests, shedAt) } }

    func run() async throws {
        lock.withLock { started = .now }
        let stopping = ManagedFlag()
        await withGracefulShutdownHandler {
            // On shutdown arrivals stop and the requests already sent finish (the engine stops after this).
            await withTaskGroup(of: Void.self) { group in
                var next = ContinuousClock.now
                while !Task.isCancelled, !stopping.isSet, !(self.endsWithTrace && self.elapsed >= self.trace.duration) {
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
                            if self.shedAt.count < 1_000_000 { self.shedAt.append((ContinuousClock.now - self.started).seconds) }
                            return false
                        }
                        self.counts.inFlight += 1
                        return true
                    }
                    guard admitted else { continue }
                    let prompt = self.nextPrompt()
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

    /// A chat prompt, or 8 ids from the current topic mix, or 8 random ids.
    private func nextPrompt() -> [Int] {
        if let chat = chatPrompts.randomElement() { return chat }
        var generator = SystemRandomNumberGenerator()
        if let topics {
            let seconds = elapsed
            let draw = Double.random(in: 0..<1)
            let topic = trace.topicWeights(at: seconds).map { TopicMix.topic(weights: $0, draw: draw) } ?? topics.topic(at: seconds, draw: draw)
            return topics.prompt(topic: topic, length: 8, using: &generator)
        }
        return (0..<8).map { _ in Int.random(in: 0..<vocabulary, using: &generator) }
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
        let sent = ContinuousClock.now
        var first: ContinuousClock.Instant?
        var tokens = 0
        for await event in events {
            switch event {
            case .token:
                tokens += 1
                if first == nil { first = .now }
                lock.withLock { counts.tokens += 1 }
            case .finished:
                let now = ContinuousClock.now
                lock.withLock {
                    counts.finished += 1
                    if let first {
                        if latencies.count >= 4096 { latencies.removeFirst(latencies.count - 4095) }
                        let tpot = tokens > 1 ? (now - first).seconds / Double(tokens - 1) : nil
                        latencies.append((now, (first - sent).seconds, tpot))
                        if finishedRequests.count < 1_000_000 {
                            finishedRequests.append(FinishedRequest(sentAt: (sent - started).seconds, ttft: (first - sent).seconds, tpot: tpot))
                        }
                    }
                }
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
        if let latency = load.recentLatency {
            lines.append(String(format: "latency (last 30 s): time to first token p50 %.0f ms p99 %.0f ms", latency.ttft.p50, latency.ttft.p99)
                         + (latency.tpot.map { String(format: "; per output token p50 %.1f ms p99 %.1f ms", $0.p50, $0.p99) } ?? ""))
        }
        let object = server.object(ExpertPoolCRD.resource, pool, namespace: namespace)
        let status = object?.json["status"].flatMap { try? ExpertPoolStatus(specJSON: $0, path: "status") }
        let target = object.flatMap { try? ExpertPoolSpec(pool: $0.json) }?.autoscaling.target ?? 0
        lines.append("SHARD    EXPERTS   REPLICAS(now/desired)  READY  LOAD/TARGET per replica (tokens/s)")
        for shard in status?.shards ?? [] {
            let perReplica = shard.load / Double(max(1, shard.readyReplicas))
            lines.append([shard.name.padding(toLength: 8, withPad: " ", startingAt: 0), shard.experts.padding(toLength: 9, withPad: " ", startingAt: 0),
                          "\(shard.replicas)/\(shard.desiredReplicas)".padding(toLength: 22, withPad: " ", startingAt: 0),
                          "\(shard.readyReplicas)".padding(toLength: 6, withPad: " ", startingAt: 0),
                          String(format: "%.0f/%.0f (%.2f)", perReplica, target, target > 0 ? perReplica / target : 0)].joined(separator: " "))
        }
        if let placement = status?.placement {
            lines.append("placement revision \(placement.revision), imbalance \(String(format: "%.2f", placement.imbalance))"
                         + (placement.retiring.isEmpty ? "" : ", rolling out (\(placement.retiring.count) old shards still serving)"))
        }
        if let limited = status?.condition("ScalingLimited"), limited.status == .true { lines.append("ScalingLimited: \(limited.message)") }
        if let event = lastEvent() { lines.append("last event: \(event)") }
        return lines.joined(separator: "\n") + "\n" + (redraw ? "" : "\n")
    }

    /// The pool's newest scaling or placement Event: when, reason, message.
    func lastEvent() -> String? {
        let events = server.objects(.events, namespace: namespace).filter {
            $0.json[path: ["involvedObject", "name"]]?.string == pool
                && ["ScaledUp", "ScaledDown", "Replanned", "PlacementRolledOut"].contains($0.json["reason"]?.string ?? "")
        }
        guard let newest = events.max(by: { ($0.json["lastTimestamp"]?.string ?? "") < ($1.json["lastTimestamp"]?.string ?? "") }) else { return nil }
        let time = newest.json["lastTimestamp"]?.string.map { String($0.dropFirst(11).prefix(8)) } ?? ""
        return "\(time) \(newest.json["reason"]?.string ?? "") \(newest.json["message"]?.string ?? "")"
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
