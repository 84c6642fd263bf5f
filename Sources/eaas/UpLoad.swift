import AttentionWorker
import Controller
import Foundation
import JSON
import KubeTestServer
import ServiceLifecycle

/// `eaas up`'s synthetic load: in each phase a number of sequences generate at once, each
/// starting a new request when the last finishes. Counts tokens, finished and failed requests.
final class SyntheticLoad: Service, @unchecked Sendable {
    let engine: GenerationEngine
    let phases: [(start: Double, sequences: Int)]
    let requestTokens: Int
    let vocabulary: Int
    private let lock = NSLock()
    private var counts = (tokens: 0, finished: 0, failed: 0)
    private var failures: [String] = []
    private var started = ContinuousClock.now

    init(engine: GenerationEngine, phases: [(start: Double, sequences: Int)], requestTokens: Int, vocabulary: Int) {
        self.engine = engine
        self.phases = phases
        self.requestTokens = requestTokens
        self.vocabulary = vocabulary
    }

    /// Tokens generated, requests finished, requests failed so far.
    var totals: (tokens: Int, finished: Int, failed: Int) { lock.withLock { counts } }
    /// The first few failure messages.
    var failureMessages: [String] { lock.withLock { failures } }

    /// Sequences the current phase asks for.
    var target: Int {
        let elapsed = ContinuousClock.now - lock.withLock { started }
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
        return phases.last { $0.start <= seconds }?.sequences ?? 0
    }

    func run() async throws {
        lock.withLock { started = .now }
        let slots = phases.map(\.sequences).max() ?? 0
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                for slot in 0..<slots {
                    group.addTask {
                        var generator = SystemRandomNumberGenerator()
                        while !Task.isCancelled {
                            guard slot < self.target else {
                                try? await Task.sleep(for: .milliseconds(200))
                                continue
                            }
                            await self.one(prompt: (0..<8).map { _ in Int.random(in: 0..<self.vocabulary, using: &generator) })
                        }
                    }
                }
            }
        }
    }

    /// One request to its end; a request the engine refuses or fails counts as failed.
    private func one(prompt: [Int]) async {
        let request = GenerationRequest(prompt: prompt, maxTokens: requestTokens, ignoreEOS: true)
        let events: AsyncStream<GenerationEvent>
        do { events = try engine.stream(request).events } catch {
            record(failure: "refused: \(error)")
            try? await Task.sleep(for: .milliseconds(100))
            return
        }
        for await event in events {
            switch event {
            case .token: lock.withLock { counts.tokens += 1 }
            case .finished: lock.withLock { counts.finished += 1 }
            case .failed(let message): record(failure: message)
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
        let seconds = max(1e-3, Double((now - lastAt).components.attoseconds) * 1e-18 + Double((now - lastAt).components.seconds))
        let rate = Double(totals.tokens - lastTokens) / seconds
        lastTokens = totals.tokens
        lastAt = now
        var lines = ["t=\(elapsed)s  load: \(load.target) sequences  worker: \(Int(rate)) tokens/s  requests: \(totals.finished) done, \(totals.failed) failed"]
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
        var text = "eaas up stopped: \(totals.finished) requests done, \(totals.failed) failed, \(totals.tokens) tokens\n"
        for message in load.failureMessages { text += "  failed: \(message)\n" }
        FileHandle.standardOutput.write(Data(text.utf8))
    }
}
