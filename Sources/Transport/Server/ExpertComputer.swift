#if canImport(Glibc)
import Glibc
#endif

/// What a data-plane server computes: the expert side that an expert pod plugs into
/// `DataPlaneServer`. The server has validated each request's frame, shape, dtype and that every
/// expert it names is hosted here before it reaches `compute`.
public protocol ExpertComputer: AnyObject {
    /// The `(MoE layer, expert)` pairs this server hosts.
    var experts: [HostedExpert] { get }
    /// Hidden size of the states it takes.
    var hidden: Int { get }
    /// The dtype of the hidden states it takes.
    var dtype: WireDType { get }
    /// Computes a batch gathered from any number of clients: for each item, each token's
    /// gate-weighted sum of its experts' outputs into `item.sums` (`[tokens, hidden]` f32).
    /// Returns, per item, nil when it was answered or the failure its client gets instead; one
    /// item's failure leaves the others' answers intact. Called by one thread at a time.
    func compute(_ batch: [ComputeItem]) -> [ComputeFailure?]
}

/// One request of a batch and where its answer goes.
public struct ComputeItem {
    public let request: RequestView
    /// `[tokens, hidden]` f32, to be overwritten.
    public let sums: UnsafeMutableBufferPointer<Float>

    public init(request: RequestView, sums: UnsafeMutableBufferPointer<Float>) {
        self.request = request
        self.sums = sums
    }
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

    public func compute(_ batch: [ComputeItem]) -> [ComputeFailure?] {
        for item in batch {
            let request = item.request, header = request.header
            for t in 0..<header.tokens {
                let row = t * header.hidden
                for h in 0..<header.hidden {
                    let x = request.state(token: t, index: h)
                    var sum: Float = 0
                    for s in 0..<header.slotsPerToken {
                        guard let id = request.expert(token: t, slot: s) else { continue }
                        sum += request.weight(token: t, slot: s) * (x + Float(id))
                    }
                    item.sums[row + h] = sum
                }
            }
            if delay > .zero { Self.sleep(delay) }
        }
        return [ComputeFailure?](repeating: nil, count: batch.count)
    }

    private static func sleep(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        var request = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
        nanosleep(&request, nil)
    }
}
