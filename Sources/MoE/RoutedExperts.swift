import CBLAS
import Foundation

/// The grouped expert computation shared by the monolithic layer and, later, the expert pods:
/// tokens are grouped by expert (a counting sort), each expert runs once on its group as one GEMM
/// chain, and its outputs, times their gate weights, are added into each token's row.
///
/// Combine order is canonical: a token's terms are added in ascending expert id (the order
/// transformers' `index_add_` loop uses), each as `acc + (w * y)`. Any split of experts across
/// servers whose partial sums are added back in ascending expert order reproduces it exactly.
public enum RoutedExperts {
    /// A routed expert that is not available where the tokens were sent.
    public struct MissingExpert: Error, CustomStringConvertible, Sendable {
        public let expert: Int
        public var description: String { "expert \(expert) is not hosted here" }
    }

    /// Marks an unused routing slot (an expert pod's request names fewer experts for some tokens).
    public static let emptySlot: Int32 = -1

    /// Adds `Σ_j weights[t, j] * expert_{ids[t, j]}(x_t)` into `output[t]` for every token.
    /// - Parameters:
    ///   - input: `[tokens, hidden]` hidden states.
    ///   - routing: `[tokens, topK]` expert ids and weights; `emptySlot` ids are skipped.
    ///   - expertCount: ids must lie in `0..<expertCount`.
    ///   - experts: the weights of an expert, or nil when it is not hosted (an error).
    ///   - output: `[tokens, hidden]`, accumulated into.
    public static func accumulate(
        input: UnsafePointer<Float>, hidden: Int, routing: Routing, expertCount: Int,
        activation: Activation, experts: (Int) -> ExpertWeights?,
        output: UnsafeMutablePointer<Float>, scratch: ExpertScratch
    ) throws {
        let tokens = routing.tokens, k = routing.topK
        // Counting sort of the (token, slot) pairs by expert; within an expert, token order.
        scratch.counts.removeAll(keepingCapacity: true)
        scratch.counts.append(contentsOf: repeatElement(0, count: expertCount + 1))
        var used = 0
        for id in routing.ids where id != emptySlot {
            guard id >= 0, Int(id) < expertCount else { throw MissingExpert(expert: Int(id)) }
            scratch.counts[Int(id) + 1] += 1
            used += 1
        }
        for e in 0..<expertCount { scratch.counts[e + 1] += scratch.counts[e] }
        scratch.slots.removeAll(keepingCapacity: true)
        scratch.slots.append(contentsOf: repeatElement(0, count: used))
        var cursor = Array(scratch.counts.prefix(expertCount))
        for slot in 0..<(tokens * k) where routing.ids[slot] != emptySlot {
            let e = Int(routing.ids[slot])
            scratch.slots[cursor[e]] = slot
            cursor[e] += 1
        }

        // Experts with at most `skinnyPassRows` tokens (every expert of a decode step, most of a
        // mixed batch's) run together as row blocks of their weights that the compute threads take
        // as they go (`DecodeExpertWork`, skinny kernel or bf16 dot products by group): both cores
        // stream until all of them are done, one pass over each weight. Larger groups (prefill) run
        // one by one through `ExpertFFN.run`. Sums are then added in ascending expert order either way.
        var small: [Int] = [], smallWeights: [ExpertWeights] = [], smallOffsets: [Int] = [], smallTokens: [Int] = []
        var smallRows = 0, ffnRows = 0
        for e in 0..<expertCount where scratch.counts[e + 1] > scratch.counts[e] {
            let n = scratch.counts[e + 1] - scratch.counts[e]
            guard let expert = experts(e) else { throw MissingExpert(expert: e) }
            guard n <= ExpertFFN.skinnyPassRows else { continue }
            small.append(e)
            smallWeights.append(expert)
            smallOffsets.append(smallRows)
            smallTokens.append(n)
            smallRows += n
            ffnRows += n * expert.ffn
        }
        let smallResults = scratch.output.reserve(max(1, smallRows) * hidden)
        if !small.isEmpty {
            let gathered = scratch.input.reserve(smallRows * hidden)
            for (i, e) in small.enumerated() {
                for j in 0..<smallTokens[i] {
                    let token = scratch.slots[scratch.counts[e] + j] / k
                    (gathered + (smallOffsets[i] + j) * hidden).update(from: input + token * hidden, count: hidden)
                }
            }
            scratch.decodeWork.run(experts: smallWeights, offsets: smallOffsets, tokens: smallTokens, activation: activation, hidden: hidden,
                                   gathered: gathered, gateUp: scratch.gateUp.reserve(2 * ffnRows), activated: scratch.activated.reserve(ffnRows),
                                   results: smallResults, threads: BLAS.threads) { scratch.usesBF16Dot($0, tokens: $1) }
        }
        var nextSmall = 0
        for e in 0..<expertCount {
            let begin = scratch.counts[e], end = scratch.counts[e + 1]
            guard end > begin else { continue }
            let n = end - begin
            let results: UnsafeMutablePointer<Float>
            if nextSmall < small.count, small[nextSmall] == e {
                results = smallResults + smallOffsets[nextSmall] * hidden
                nextSmall += 1
            } else {
                let gathered = scratch.largeInput.reserve(n * hidden)
                for i in 0..<n {
                    let token = scratch.slots[begin + i] / k
                    (gathered + i * hidden).update(from: input + token * hidden, count: hidden)
                }
                results = scratch.largeOutput.reserve(n * hidden)
                ExpertFFN.run(experts(e)!, activation: activation, tokens: n, input: gathered, output: results, scratch: scratch)
            }
            for i in 0..<n {
                let slot = scratch.slots[begin + i]
                eaas_axpy(routing.weights[slot], results + i * hidden, output + (slot / k) * hidden, hidden)
            }
        }
    }
}
