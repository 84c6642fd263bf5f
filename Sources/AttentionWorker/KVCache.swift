/// One sequence's keys and values for every layer: `[capacity, kvHeads * headDim]` each, f32,
/// allocated once for the sequence's longest possible length, so decoding never reallocates.
final class KVCache {
    let layers: Int
    let capacity: Int
    /// Floats per position (`kvHeads * headDim`).
    let width: Int
    /// Positions written so far (the same in every layer once a step is done).
    var length = 0
    private let storage: UnsafeMutablePointer<Float>

    init(layers: Int, capacity: Int, width: Int) {
        self.layers = layers
        self.capacity = capacity
        self.width = width
        storage = .allocate(capacity: max(1, layers * 2 * capacity * width))
    }

    deinit { storage.deallocate() }

    /// Bytes held.
    var byteCount: Int { layers * 2 * capacity * width * MemoryLayout<Float>.size }

    static func byteCount(layers: Int, capacity: Int, width: Int) -> Int { layers * 2 * capacity * width * MemoryLayout<Float>.size }

    /// Keys of `layer`, position 0.
    func keys(_ layer: Int) -> UnsafeMutablePointer<Float> { storage + (layer * 2) * capacity * width }
    /// Values of `layer`, position 0.
    func values(_ layer: Int) -> UnsafeMutablePointer<Float> { storage + (layer * 2 + 1) * capacity * width }
}
