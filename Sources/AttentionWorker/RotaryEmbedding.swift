#if canImport(Glibc)
import Glibc
#endif
import MoE

/// Rotary position embedding with transformers' f32 arithmetic: `inv_freq[i] = 1 / theta^(2i/d)`
/// (divided by the factor for `linear` scaling), angle `position * inv_freq[i]` rounded to f32,
/// then its cosine and sine. Two layouts of the rotated pairs: `(x[i], x[i + d/2])`
/// (`rotate_half`; Qwen, Mixtral, OLMoE) or `(x[2i], x[2i + 1])` (interleaved; DeepSeek).
struct RotaryEmbedding {
    let headDim: Int
    let inverseFrequencies: [Float]
    /// YaRN's factor on cos and sin (1 otherwise).
    let attentionFactor: Float
    var interleaved = false

    init(headDim: Int, theta: Double, linearFactor: Double, yarn: YarnScaling? = nil) {
        precondition(headDim % 2 == 0, "rotary embedding needs an even head size")
        self.headDim = headDim
        // `theta ** (arange(0, d, 2) / d)` in f32, as torch computes it.
        let positionFrequencies = (0..<(headDim / 2)).map { i in
            Float(pow(Double(Float(theta)), Double(Float(2 * i) / Float(headDim))))
        }
        guard let yarn else {
            inverseFrequencies = positionFrequencies.map { Float(1) / $0 / Float(linearFactor) }
            attentionFactor = 1
            return
        }
        // transformers' _compute_yarn_parameters, step by step in the same precisions.
        let d = Double(headDim)
        func correctionDimension(_ rotations: Double) -> Double {
            d * log(Double(yarn.originalMaxPositions) / (rotations * 2 * Double.pi)) / (2 * log(theta))
        }
        var low = correctionDimension(yarn.betaFast), high = correctionDimension(yarn.betaSlow)
        if yarn.truncate { low = low.rounded(.down); high = high.rounded(.up) }
        low = max(low, 0)
        high = min(high, d - 1)
        if low == high { high += 0.001 }
        let factor = Float(yarn.factor)
        inverseFrequencies = positionFrequencies.enumerated().map { i, p in
            let extrapolation = Float(1) / p
            let interpolation = Float(1) / (factor * p)
            let ramp = min(max((Float(i) - Float(low)) / (Float(high) - Float(low)), 0), 1)
            let extrapolationFactor = 1 - ramp
            return interpolation * (1 - extrapolationFactor) + extrapolation * extrapolationFactor
        }
        attentionFactor = Float(yarn.attentionFactor)
    }

    /// The cosines and sines of `position`'s angles into `cos`/`sin` (`[headDim / 2]` each).
    func angles(position: Int, cos: UnsafeMutablePointer<Float>, sin: UnsafeMutablePointer<Float>) {
        for i in 0..<(headDim / 2) {
            let angle = Float(position) * inverseFrequencies[i]
            cos[i] = Float(Glibc.cos(Double(angle))) * attentionFactor
            sin[i] = Float(Glibc.sin(Double(angle))) * attentionFactor
        }
    }

    /// Rotates the `headDim` values at `x` in place by the angles `angles` filled in.
    func rotate(_ x: UnsafeMutablePointer<Float>, cos: UnsafePointer<Float>, sin: UnsafePointer<Float>) {
        let half = headDim / 2
        if interleaved {
            for i in 0..<half {
                let a = x[2 * i], b = x[2 * i + 1]
                x[2 * i] = a * cos[i] - b * sin[i]
                x[2 * i + 1] = b * cos[i] + a * sin[i]
            }
        } else {
            for i in 0..<half {
                let a = x[i], b = x[i + half]
                x[i] = a * cos[i] - b * sin[i]
                x[i + half] = b * cos[i] + a * sin[i]
            }
        }
    }
}
