import Foundation

/// What identifies a checkpoint: 16 bytes that an expert pod sends in its handshake reply and an
/// attention worker compares with its own, so that experts of another checkpoint of the same
/// shape (a fine-tune, the next revision during a rollout) are never mixed into its model.
///
/// Computed from `config.json`'s bytes and, for every tensor in name order, its name, dtype,
/// shape and a fingerprint of its bytes: 16 blocks of 64 bytes spread evenly over the tensor,
/// first and last included. Both sides compute it over the whole checkpoint, whatever shard they
/// serve, so they agree exactly when their files do; it reads about 1 KiB per tensor, so it costs
/// milliseconds at load rather than a pass over every weight. Two checkpoints that differ only
/// in bytes that no block samples (an edit of a few weights in the middle of a tensor) get the
/// same digest: it tells revisions apart, it is not a checksum of the files.
public struct ModelDigest: Sendable, Hashable, CustomStringConvertible {
    public static let byteCount = 16
    static let blocksPerTensor = 16
    static let blockBytes = 64

    public let bytes: [UInt8]

    public init(bytes: [UInt8]) {
        precondition(bytes.count == Self.byteCount, "a model digest is \(Self.byteCount) bytes")
        self.bytes = bytes
    }

    /// Lower-case hex.
    public var description: String { bytes.map { String(format: "%02x", $0) }.joined() }

    /// The digest of the checkpoint in `directory`.
    public static func compute(directory: String) throws -> ModelDigest {
        let configPath = directory + "/config.json"
        guard let config = FileManager.default.contents(atPath: configPath) else {
            throw SafeTensorsError(file: configPath, "cannot be read")
        }
        return try compute(config: Array(config), checkpoint: Checkpoint(directory: directory))
    }

    /// The digest of `checkpoint` with `config` (the bytes of its config.json).
    public static func compute(config: [UInt8], checkpoint: Checkpoint) throws -> ModelDigest {
        var hash = DigestHasher()
        hash.add(tag: 1, config)
        for name in checkpoint.tensorNames {
            let tensor = try checkpoint.tensor(name)
            hash.add(tag: 2, Array(name.utf8))
            hash.add(tag: 3, Array(tensor.dtype.rawValue.utf8))
            hash.add(tag: 4, tensor.shape.flatMap { withUnsafeBytes(of: UInt64($0).littleEndian, Array.init) })
            let bytes = tensor.bytes
            if bytes.count <= blocksPerTensor * blockBytes {
                hash.add(tag: 5, Array(bytes))
            } else {
                let last = bytes.count - blockBytes
                for block in 0..<blocksPerTensor {
                    let start = last * block / (blocksPerTensor - 1)
                    hash.add(tag: 5, Array(UnsafeRawBufferPointer(rebasing: bytes[start..<(start + blockBytes)])))
                }
            }
        }
        return ModelDigest(bytes: hash.finish())
    }
}

/// Two 64-bit FNV-1a lanes with different offsets over length-prefixed, tagged fields (so that
/// no two different field sequences hash the same stream), finished by a 64-bit mixer.
struct DigestHasher {
    private var a: UInt64 = 0xcbf2_9ce4_8422_2325
    private var b: UInt64 = 0x84222325_cbf29ce4
    private static let prime: UInt64 = 0x0000_0100_0000_01b3

    mutating func add(tag: UInt8, _ field: [UInt8]) {
        byte(tag)
        for shift in stride(from: 0, to: 64, by: 8) { byte(UInt8(truncatingIfNeeded: UInt64(field.count) >> UInt64(shift))) }
        for value in field { byte(value) }
    }

    private mutating func byte(_ value: UInt8) {
        a = (a ^ UInt64(value)) &* Self.prime
        b = (b ^ UInt64(value ^ 0x5c)) &* Self.prime
    }

    func finish() -> [UInt8] {
        func mix(_ x: UInt64) -> UInt64 {
            var z = x &+ 0x9e37_79b9_7f4a_7c15
            z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
            z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
            return z ^ (z >> 31)
        }
        let x = mix(a ^ b.rotated), y = mix(b &+ a)
        return withUnsafeBytes(of: x.littleEndian, Array.init) + withUnsafeBytes(of: y.littleEndian, Array.init)
    }
}

extension UInt64 {
    fileprivate var rotated: UInt64 { (self << 17) | (self >> 47) }
}
