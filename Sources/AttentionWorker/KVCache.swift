/// One sequence's keys and values for every layer: `[capacity, keyWidth]` and
/// `[capacity, valueWidth]` per layer, f32, allocated once for the sequence's longest possible
/// length, so decoding never reallocates.
final class KVCache {
    let layers: Int
    let capacity: Int
    /// Floats per position of the keys (`kvHeads * keyDim`) and of the values (`kvHeads * valueDim`).
    let keyWidth: Int
    let valueWidth: Int
    /// Positions written so far (the same in every layer once a step is done).
    var length = 0
    private let storage: UnsafeMutablePointer<Float>

    init(layers: Int, capacity: Int, keyWidth: Int, valueWidth: Int) {
        self.layers = layers
        self.capacity = capacity
        self.keyWidth = keyWidth
        self.valueWidth = valueWidth
        storage = .allocate(capacity: max(1, layers * capacity * (keyWidth + valueWidth)))
    }

    deinit { storage.deallocate() }

    static func byteCount(layers: Int, capacity: Int, keyWidth: Int, valueWidth: Int) -> Int {
        layers * capacity * (keyWidth + valueWidth) * MemoryLayout<Float>.size
    }

    /// Keys of `layer`, position 0.
    func keys(_ layer: Int) -> UnsafeMutablePointer<Float> { storage + layer * capacity * (keyWidth + valueWidth) }
    /// Values of `layer`, position 0.
    func values(_ layer: Int) -> UnsafeMutablePointer<Float> { keys(layer) + capacity * keyWidth }
}
