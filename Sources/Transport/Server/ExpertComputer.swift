/// What a data-plane server computes: the expert side that an expert pod plugs into
/// `DataPlaneServer`. The server has validated the request's frame, shape, dtype and that every
/// expert it names is hosted here before `compute` is called.
public protocol ExpertComputer: AnyObject {
    /// The `(MoE layer, expert)` pairs this server hosts.
    var experts: [HostedExpert] { get }
    /// Hidden size of the states it takes.
    var hidden: Int { get }
    /// The dtype of the hidden states it takes.
    var dtype: WireDType { get }
    /// Writes, for each token of `request`, the gate-weighted sum of its experts' outputs into
    /// `sums` (`[tokens, hidden]` f32). Throws a `ComputeFailure` to answer with an error frame.
    func compute(_ request: RequestView, into sums: UnsafeMutableBufferPointer<Float>) throws
}

/// A request the computer cannot answer, with the code the client sees.
public struct ComputeFailure: Error, CustomStringConvertible, Sendable {
    public let code: WireErrorCode
    public let message: String

    public init(_ code: WireErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}

/// Experts without weights whose output is known in closed form, for testing and benchmarking the
/// data plane alone (`eaas transport-server`): expert `e` maps a hidden state `x` to `x + e`, so a
/// token's answer is `Σ_k w_k · (x + e_k)`. Any client can check each answer exactly, which is
/// what the failover tests need to prove nothing was lost or counted twice.
public final class SyntheticExperts: ExpertComputer {
    public let experts: [HostedExpert]
    public let hidden: Int
    public let dtype: WireDType
    /// How long each request takes on top of the arithmetic, to simulate heavier experts.
    public let delay: Duration

    public init(experts: [HostedExpert], hidden: Int, dtype: WireDType, delay: Duration = .zero) {
        self.experts = experts
        self.hidden = hidden
        self.dtype = dtype
        self.delay = delay
    }

    /// The answer for one token: `Σ_k weights[k] · (states[h] + ids[k])`, summed in slot order.
    public static func answer(ids: [UInt16], weights: [Float], state: (Int) -> Float, hidden: Int, into out: (Int, Float) -> Void) {
        for h in 0..<hidden {
            var sum: Float = 0
            let x = state(h)
            for (id, w) in zip(ids, weights) { sum += w * (x + Float(id)) }
            out(h, sum)
        }
    }

    public func compute(_ request: RequestView, into sums: UnsafeMutableBufferPointer<Float>) throws {
        let header = request.header
        var ids: [UInt16] = [], weights: [Float] = []
        for t in 0..<header.tokens {
            ids.removeAll(keepingCapacity: true)
            weights.removeAll(keepingCapacity: true)
            for s in 0..<header.slotsPerToken {
                guard let id = request.expert(token: t, slot: s) else { continue }
                ids.append(id)
                weights.append(request.weight(token: t, slot: s))
            }
            let row = t * header.hidden
            Self.answer(ids: ids, weights: weights, state: { request.state(token: t, index: $0) }, hidden: header.hidden) { sums[row + $0] = $1 }
        }
        if delay > .zero { Self.sleep(delay) }
    }

    private static func sleep(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        var request = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
        nanosleep(&request, nil)
    }
}

#if canImport(Glibc)
import Glibc
#endif
