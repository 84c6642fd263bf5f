#if canImport(Glibc)
import Glibc
#endif

/// Rotary position embedding with transformers' f32 arithmetic: `inv_freq[i] = 1 / theta^(2i/d)`
/// (divided by the factor for `linear` scaling), angle `position * inv_freq[i]` rounded to f32,
/// then its cosine and sine. Two layouts of the rotated pairs: `(x[i], x[i + d/2])`
/// (`rotate_half`; Qwen, Mixtral, OLMoE) or `(x[2i], x[2i + 1])` (interleaved; DeepSeek).
struct RotaryEmbedding {
    let headDim: Int
    let inverseFrequencies: [Float]
    var interleaved = false

    init(headDim: Int, theta: Double, linearFactor: Double) {
        precondition(headDim % 2 == 0, "rotary embedding needs an even head size")
        self.headDim = headDim
        inverseFrequencies = (0..<(headDim / 2)).map { i in
            let exponent = Float(2 * i) / Float(headDim)
            let base = Float(pow(Double(Float(theta)), Double(exponent)))
            return Float(1) / base / Float(linearFactor)
        }
    }

    /// The cosines and sines of `position`'s angles into `cos`/`sin` (`[headDim / 2]` each).
    func angles(position: Int, cos: UnsafeMutablePointer<Float>, sin: UnsafeMutablePointer<Float>) {
        for i in 0..<(headDim / 2) {
            let angle = Float(position) * inverseFrequencies[i]
            cos[i] = Float(Glibc.cos(Double(angle)))
            sin[i] = Float(Glibc.sin(Double(angle)))
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
