/// DeepSeek-V3's FP8 weights: F8_E4M3 values (OCP E4M3FN: no infinities, S.1111.111 is NaN) and an
/// f32 `weight_scale_inv` per block of `block.rows × block.cols`; the weight is their product.
enum FP8Blocks {
    /// The 256 E4M3FN values.
    static let values: [Float] = (0..<256).map { bits in
        let sign: Float = bits & 0x80 != 0 ? -1 : 1
        let exponent = (bits >> 3) & 0x0f, mantissa = bits & 0x07
        if exponent == 0x0f && mantissa == 0x07 { return .nan }
        if exponent == 0 { return sign * Float(mantissa) / 8 * Float(sign: .plus, exponent: -6, significand: 1) }
        return sign * (1 + Float(mantissa) / 8) * Float(sign: .plus, exponent: exponent - 7, significand: 1)
    }

    static func dequantize(_ tensor: Tensor, scales: Tensor, block: (rows: Int, cols: Int)) throws -> Tensor {
        guard tensor.shape.count == 2 else { throw tensor.error("an F8_E4M3 weight must be 2-D, shape is \(tensor.shape)") }
        let rows = tensor.shape[0], cols = tensor.shape[1]
        let blockRows = (rows + block.rows - 1) / block.rows, blockCols = (cols + block.cols - 1) / block.cols
        guard scales.shape == [blockRows, blockCols] else {
            throw scales.error("expected [\(blockRows), \(blockCols)] scales for \(rows) × \(cols) in blocks of \(block.rows) × \(block.cols), shape is \(scales.shape)")
        }
        let scale = try scales.floats()
        let storage = WeightStorage(byteCount: rows * cols * 4)
        let out = storage.bytes.bindMemory(to: Float.self)
        let source = tensor.bytes.bindMemory(to: UInt8.self)
        values.withUnsafeBufferPointer { table in
            for r in 0..<rows {
                let scaleRow = (r / block.rows) * blockCols
                for c in 0..<cols {
                    out[r * cols + c] = table[Int(source[r * cols + c])] * scale[scaleRow + c / block.cols]
                }
            }
        }
        let info = TensorInfo(name: tensor.name, dtype: .f32, shape: tensor.shape, dataOffsets: 0..<(rows * cols * 4))
        return Tensor(info: info, file: tensor.file, bytes: UnsafeRawBufferPointer(storage.bytes), owner: storage)
    }
}
