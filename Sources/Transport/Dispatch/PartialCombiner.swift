#if canImport(Glibc)
import Glibc
#endif

/// Adds a step's answers into the layer's output `[tokens, hidden]` in the canonical order: per
/// token, the partial sums of its servers in ascending order of the first expert each covers,
/// as `((0 + p₁) + p₂) + …`.
///
/// The first answer for a token is copied straight into its output row: a server's partial sum
/// starts from +0, so `0 + p₁` is `p₁` bit for bit, and a token with one server (every token of
/// a step that went to one pod) costs one copy from the answer. When a second answer for a token
/// comes, both go aside, and `finish` adds that token's partials in order.
struct PartialCombiner {
    /// Storage reused across steps.
    struct Scratch {
        /// Per token: -1 (nothing yet), the first expert of the one partial in its output row, or
        /// `several` (its partials are in `parts`).
        var state: [Int32] = []
        var sums: [Float] = []
        var parts: [(token: Int, firstExpert: UInt16, offset: Int)] = []
    }

    private static let none: Int32 = -1, several: Int32 = -2
    private let tokens: Int, hidden: Int
    private let output: UnsafeMutablePointer<Float>
    private(set) var scratch: Scratch

    init(tokens: Int, hidden: Int, output: UnsafeMutablePointer<Float>, scratch: Scratch) {
        self.tokens = tokens
        self.hidden = hidden
        self.output = output
        self.scratch = scratch
        self.scratch.state.removeAll(keepingCapacity: true)
        self.scratch.state.append(contentsOf: repeatElement(Self.none, count: tokens))
        self.scratch.sums.removeAll(keepingCapacity: true)
        self.scratch.parts.removeAll(keepingCapacity: true)
    }

    /// Takes one answer: row `i` of `sums` (`[rows, hidden]` f32 little-endian) is the partial sum of
    /// token `rowTokens[i]` whose first expert is `firstExperts[i]`.
    mutating func take(_ sums: UnsafeRawBufferPointer, tokens rowTokens: [Int], firstExperts: [UInt16]) {
        let hidden = hidden, output = output, rowBytes = hidden * 4
        precondition(sums.count >= rowTokens.count * rowBytes, "answer shorter than its rows")
        for (row, token) in rowTokens.enumerated() {
            let source = sums.baseAddress! + row * rowBytes
            switch scratch.state[token] {
            case Self.none:
                Self.load(source, into: output + token * hidden, count: hidden)
                scratch.state[token] = Int32(firstExperts[row])
            case Self.several:
                keepAside(token: token, firstExpert: firstExperts[row]) { Self.load(source, into: $0, count: hidden) }
            case let first:
                // The row's first partial moves aside beside the new one.
                keepAside(token: token, firstExpert: UInt16(first)) { $0.update(from: output + token * hidden, count: hidden) }
                keepAside(token: token, firstExpert: firstExperts[row]) { Self.load(source, into: $0, count: hidden) }
                scratch.state[token] = Self.several
            }
        }
    }

    private mutating func keepAside(token: Int, firstExpert: UInt16, fill: (UnsafeMutablePointer<Float>) -> Void) {
        let offset = scratch.sums.count
        scratch.sums.append(contentsOf: repeatElement(0, count: hidden))
        scratch.sums.withUnsafeMutableBufferPointer { fill($0.baseAddress! + offset) }
        scratch.parts.append((token, firstExpert, offset))
    }

    /// Adds the partials of tokens answered by several servers into their rows, in order.
    mutating func finish() {
        precondition(!scratch.state.contains(Self.none), "a token of the step has no answer")
        guard !scratch.parts.isEmpty else { return }
        scratch.parts.sort { ($0.token, $0.firstExpert) < ($1.token, $1.firstExpert) }
        scratch.sums.withUnsafeBufferPointer { sums in
            var previous = -1
            for part in scratch.parts {
                let row = output + part.token * hidden
                if part.token != previous { row.update(repeating: 0, count: hidden) }
                previous = part.token
                for h in 0..<hidden { row[h] = row[h] + sums[part.offset + h] }
            }
        }
    }

    private static func load(_ source: UnsafeRawPointer, into destination: UnsafeMutablePointer<Float>, count: Int) {
        #if _endian(little)
        UnsafeMutableRawPointer(destination).copyMemory(from: source, byteCount: count * 4)
        #else
        for i in 0..<count { destination[i] = Float(bitPattern: UInt32(littleEndian: source.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
        #endif
    }
}
