/// `y = weight * x / sqrt(mean(x²) + eps)`, as transformers' RMSNorm computes it in f32 (the
/// mean accumulated in f64 here, which only removes rounding).
enum RMSNorm {
    /// Normalises each of `rows` rows of `count` values (rows `stride` apart) from `input` into `output`
    /// (which may be `input`).
    static func apply(_ input: UnsafePointer<Float>, rows: Int, count: Int, stride: Int, weight: [Float], eps: Float,
                      output: UnsafeMutablePointer<Float>) {
        precondition(weight.count == count, "norm weight is not [\(count)]")
        weight.withUnsafeBufferPointer { w in
            for r in 0..<rows {
                let x = input + r * stride, y = output + r * stride
                var sum: Double = 0
                for i in 0..<count { sum += Double(x[i]) * Double(x[i]) }
                let scale = Float(1 / (sum / Double(count) + Double(eps)).squareRoot())
                for i in 0..<count { y[i] = w[i] * (x[i] * scale) }
            }
        }
    }
}
