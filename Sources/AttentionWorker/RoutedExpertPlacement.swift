import MoE
import Transport

/// Where an MoE layer's routed experts run. The gate, the shared experts and the combine are the
/// same code either way (`MoELayer.forward(_:tokens:scratch:routed:)`); only this differs.
public enum ExpertMode: String, Sendable, CaseIterable {
    /// In this process (the monolithic baseline).
    case local
    /// On expert pods, through the data plane.
    case remote
}

/// The routed-expert computation of a step: local weights, or dispatchers to expert pods.
///
/// Remote, it has one lane per micro-batch the decoder keeps in flight at once (the ping-pong
/// overlap): each lane is its own dispatcher, with its own connections to the pods and its own
/// staging buffer, so that lane 0's answers are computed by the pods while the worker runs lane
/// 1's attention.
final class RoutedExpertPlacement {
    private let dispatchers: [Dispatcher]
    private let wireDType: WireDType
    /// Per lane, the hidden states narrowed to the wire dtype (grown, never shrunk; read by a
    /// failover resend until the lane's step completes, so it is memory of its own, not an array
    /// whose pointer would only be valid inside a closure).
    private var staging: [UnsafeMutableBufferPointer<UInt16>]

    /// Experts in this process.
    init() {
        dispatchers = []
        staging = []
        wireDType = .f32
    }

    /// Experts on the pods the `dispatchers` reach (one per lane), hidden states sent as `wireDType`.
    init(dispatchers: [Dispatcher], wireDType: WireDType) {
        precondition(!dispatchers.isEmpty, "a remote placement needs a dispatcher")
        self.dispatchers = dispatchers
        self.wireDType = wireDType
        staging = Array(repeating: UnsafeMutableBufferPointer(start: nil, count: 0), count: dispatchers.count)
    }

    deinit {
        for buffer in staging { buffer.deallocate() }
    }

    var mode: ExpertMode { dispatchers.isEmpty ? .local : .remote }

    /// Micro-batches that may be in flight at once: one per dispatcher remote; local experts are
    /// computed in `begin`, so there is nothing to overlap.
    var lanes: Int { max(1, dispatchers.count) }

    /// Servers marked down since start (remote only).
    var failovers: Int { dispatchers.reduce(0) { $0 + $1.failovers } }

    /// Where the MoE layers' time went since start.
    var phases: MoEPhaseTimes {
        var phases = timings
        phases.remote = dispatchers.reduce(StepPhaseTimes()) { $0 + $1.phases }
        return phases
    }
    /// The gate and local expert times (the model adds the gate's), and the narrowing.
    var timings = MoEPhaseTimes()
    private let clock = ContinuousClock()

    /// Distinct routed experts the layers ran, summed over every call: how much expert weight a
    /// step had to read (the benchmarks' roofline).
    private(set) var expertsTouched = 0
    private var seen: [UInt32] = []
    private var calls: UInt32 = 0

    private func countTouched(_ routing: Routing) {
        calls &+= 1
        if calls == 0 { seen = seen.map { _ in 0 }; calls = 1 }
        for id in routing.ids where id >= 0 {
            let e = Int(id)
            if e >= seen.count { seen.append(contentsOf: repeatElement(0, count: e + 1 - seen.count)) }
            if seen[e] != calls {
                seen[e] = calls
                expertsTouched += 1
            }
        }
    }

    /// Adds the routed experts of `routing` for `input` `[tokens, hidden]` into `output` (zeroed).
    func run(_ block: MoELayer, input: UnsafeBufferPointer<Float>, routing: Routing, output: UnsafeMutableBufferPointer<Float>,
             scratch: ExpertScratch) throws {
        try begin(block, input: input, routing: routing, output: output, scratch: scratch, lane: 0)
        try complete(lane: 0)
    }

    /// Starts adding the routed experts of `routing` into `output` on `lane`: local experts are
    /// computed here, remote ones are sent and `complete(lane:)` gathers them. `output` must stay
    /// untouched until then.
    func begin(_ block: MoELayer, input: UnsafeBufferPointer<Float>, routing: Routing, output: UnsafeMutableBufferPointer<Float>,
               scratch: ExpertScratch, lane: Int) throws {
        countTouched(routing)
        guard !dispatchers.isEmpty else {
            let started = clock.now
            try block.accumulateRouted(input, routing: routing, into: output, scratch: scratch)
            timings.localExperts += clock.now - started
            return
        }
        let dispatcher = dispatchers[lane]
        // The dispatcher combines the answers straight into `output`.
        switch wireDType {
        case .f32:
            try dispatcher.begin(layer: UInt16(block.layer), tokens: routing.tokens, topK: routing.topK, ids: routing.ids,
                                 weights: routing.weights, states: UnsafeRawBufferPointer(input), hidden: block.hidden, dtype: .f32, into: output)
        case .bf16, .f16:
            if staging[lane].count < input.count {
                staging[lane].deallocate()
                staging[lane] = .allocate(capacity: input.count)
            }
            let started = clock.now
            let narrow = staging[lane].baseAddress!
            if wireDType == .bf16 {
                BLAS.narrowBF16(input.baseAddress!, into: narrow, count: input.count)
            } else {
                BLAS.narrowF16(input.baseAddress!, into: narrow, count: input.count)
            }
            timings.narrow += clock.now - started
            try dispatcher.begin(layer: UInt16(block.layer), tokens: routing.tokens, topK: routing.topK, ids: routing.ids,
                                 weights: routing.weights, states: UnsafeRawBufferPointer(start: narrow, count: input.count * 2),
                                 hidden: block.hidden, dtype: wireDType, into: output)
        }
    }

    /// Finishes `lane`'s step (remote: waits for the pods' answers).
    func complete(lane: Int) throws {
        guard !dispatchers.isEmpty else { return }
        try dispatchers[lane].complete()
    }

    /// Drops `lane`'s step in flight, if any (another lane failed): its answers are never read.
    func abandon(lane: Int) {
        guard !dispatchers.isEmpty else { return }
        dispatchers[lane].abandonStep()
    }

    func close() { dispatchers.forEach { $0.close() } }
}

/// Where the MoE layers of the steps spend their time, summed: the gate (router GEMM and top-k),
/// narrowing the hidden states to the wire dtype, the dispatcher's phases (remote), or the routed
/// experts computed here (local).
public struct MoEPhaseTimes: Sendable, Equatable {
    public var gate: Duration = .zero
    public var narrow: Duration = .zero
    public var remote = StepPhaseTimes()
    public var localExperts: Duration = .zero
    /// MoE layer calls.
    public var layers = 0

    public init() {}

    /// Phase by phase sums and differences (a run's share: `after - before`).
    public static func + (a: MoEPhaseTimes, b: MoEPhaseTimes) -> MoEPhaseTimes { a.combined(with: b, +, +) }
    public static func - (a: MoEPhaseTimes, b: MoEPhaseTimes) -> MoEPhaseTimes { a.combined(with: b, -, -) }
    public static func += (a: inout MoEPhaseTimes, b: MoEPhaseTimes) { a = a + b }

    private func combined(with other: MoEPhaseTimes, _ times: (Duration, Duration) -> Duration, _ counts: (Int, Int) -> Int) -> MoEPhaseTimes {
        var d = MoEPhaseTimes()
        d.gate = times(gate, other.gate)
        d.narrow = times(narrow, other.narrow)
        d.remote = StepPhaseTimes.combine(remote, other.remote, times, counts)
        d.localExperts = times(localExperts, other.localExperts)
        d.layers = counts(layers, other.layers)
        return d
    }

    /// Milliseconds per MoE layer call, by phase (the bench's `phase_ms`).
    public var millisecondsPerLayer: [String: Double] {
        func ms(_ d: Duration) -> Double {
            (Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18) * 1e3 / Double(max(1, layers))
        }
        return ["gate": ms(gate), "narrow": ms(narrow), "dispatch": ms(remote.dispatch), "wait": ms(remote.wait),
                "combine": ms(remote.combine), "copy": ms(remote.copy), "local_experts": ms(localExperts)]
    }
}
