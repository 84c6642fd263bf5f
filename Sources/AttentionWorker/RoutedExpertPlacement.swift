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

/// The routed-expert computation of a step: local weights, or a dispatcher to expert pods.
final class RoutedExpertPlacement {
    private let dispatcher: Dispatcher?
    private let wireDType: WireDType
    /// The step's hidden states narrowed to the wire dtype (reused).
    private var staging: [UInt16] = []

    /// Experts in this process.
    init() {
        dispatcher = nil
        wireDType = .f32
    }

    /// Experts on the pods `dispatcher` reaches, hidden states sent as `wireDType`.
    init(dispatcher: Dispatcher, wireDType: WireDType) {
        self.dispatcher = dispatcher
        self.wireDType = wireDType
    }

    var mode: ExpertMode { dispatcher == nil ? .local : .remote }

    /// Servers marked down since start (remote only).
    var failovers: Int { dispatcher?.failovers ?? 0 }

    /// Where the MoE layers' time went since start.
    var phases: MoEPhaseTimes {
        var phases = timings
        phases.remote = dispatcher?.phases ?? StepPhaseTimes()
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
        countTouched(routing)
        guard let dispatcher else {
            let started = clock.now
            try block.accumulateRouted(input, routing: routing, into: output, scratch: scratch)
            timings.localExperts += clock.now - started
            return
        }
        // The dispatcher combines the answers straight into `output`.
        switch wireDType {
        case .f32:
            try dispatcher.step(layer: UInt16(block.layer), tokens: routing.tokens, topK: routing.topK, ids: routing.ids,
                                weights: routing.weights, states: UnsafeRawBufferPointer(input), hidden: block.hidden, dtype: .f32, into: output)
        case .bf16, .f16:
            if staging.count < input.count { staging = [UInt16](repeating: 0, count: input.count) }
            try staging.withUnsafeMutableBufferPointer { narrow in
                let started = clock.now
                if wireDType == .bf16 {
                    BLAS.narrowBF16(input.baseAddress!, into: narrow.baseAddress!, count: input.count)
                } else {
                    BLAS.narrowF16(input.baseAddress!, into: narrow.baseAddress!, count: input.count)
                }
                timings.narrow += clock.now - started
                try dispatcher.step(layer: UInt16(block.layer), tokens: routing.tokens, topK: routing.topK, ids: routing.ids,
                                    weights: routing.weights, states: UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(narrow).prefix(input.count * 2)),
                                    hidden: block.hidden, dtype: wireDType, into: output)
            }
        }
    }

    func close() { dispatcher?.close() }
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

    /// The times of `self` since `earlier`.
    public func since(_ earlier: MoEPhaseTimes) -> MoEPhaseTimes {
        var d = MoEPhaseTimes()
        d.gate = gate - earlier.gate
        d.narrow = narrow - earlier.narrow
        d.remote = remote.since(earlier.remote)
        d.localExperts = localExperts - earlier.localExperts
        d.layers = layers - earlier.layers
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
