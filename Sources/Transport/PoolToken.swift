/// The pool's shared secret, compared in constant time so that a peer learns nothing from how
/// long a wrong guess takes.
public enum PoolToken {
    /// Whether `candidate` equals `expected`. Time depends only on the lengths, never on where
    /// the bytes first differ.
    public static func matches(_ candidate: [UInt8], _ expected: [UInt8]) -> Bool {
        var difference = UInt8(truncatingIfNeeded: candidate.count ^ expected.count)
        let n = max(candidate.count, expected.count)
        for i in 0..<n {
            let a = i < candidate.count ? candidate[i] : 0
            let b = i < expected.count ? expected[i] : 0
            difference |= a ^ b
        }
        return difference == 0 && candidate.count == expected.count
    }
}
