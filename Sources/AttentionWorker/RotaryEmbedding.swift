#if canImport(Glibc)
import Glibc
#endif

/// Rotary position embedding (`rotate_half` convention) with transformers' f32 arithmetic:
/// `inv_freq[i] = 1 / theta^(2i/d)` (divided by the factor for `linear` scaling), angle
/// `position * inv_freq[i]` rounded to f32, then its cosine and sine.
struct RotaryEmbedding {
    let headDim: Int
    let inverseFrequencies: [Float]

    init(headDim: Int, theta: Double, linearFactor: Double) {
        precondition(headDim % 2 == 0, "rotary embedding needs an even head size")
        self.headDim = headDim
        inverseFrequencies = (0..<(headDim / 2)).map { i in
            let exponent = Float(2 * i) / Float(headDim)
            let base = Float(pow(Double(Float(theta)), Double(exponent)))
            return Float(1) / base / Float(linearFactor)
        }
    }

    /// Rotates `heads` heads of `headDim` values at `vector` (contiguous) in place for `position`.
    /// `cos`/`sin` are `[headDim / 2]` scratch, filled here.
    func apply(_ vector: UnsafeMutablePointer<Float>, heads: Int, position: Int, cos: UnsafeMutablePointer<Float>, sin: UnsafeMutablePointer<Float>) {
        let half = headDim / 2
        for i in 0..<half {
            let angle = Float(position) * inverseFrequencies[i]
            cos[i] = Float(Glibc.cos(Double(angle)))
            sin[i] = Float(Glibc.sin(Double(angle)))
        }
        for h in 0..<heads {
            let x = vector + h * headDim
            for i in 0..<half {
                let a = x[i], b = x[i + half]
                x[i] = a * cos[i] - b * sin[i]
                x[i + half] = b * cos[i] + a * sin[i]
            }
        }
    }
}
