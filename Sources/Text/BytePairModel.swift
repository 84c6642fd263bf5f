/// A BPE model (`"model": {"type": "BPE"}`): a vocabulary, ranked merges, and what to do with a
/// character the vocabulary lacks (byte fallback to `<0xXX>` pieces, or the unknown token).
///
/// A piece is split into its characters (its bytes, on the byte-level path), then the adjacent
/// pair with the lowest merge rank is merged, leftmost first among equals, until no pair has a
/// merge: the order Hugging Face `tokenizers` merges in, so the ids are the same.
struct BytePairModel: Sendable {
    /// id → token, for the model's own vocabulary ("" where an id has no token).
    let tokens: [String]
    let vocab: [String: Int32]
    /// The tokens of one scalar, by scalar value. Swift compares strings by canonical equivalence
    /// (U+0341 equals U+0301 there), so characters are looked up by value, never as strings.
    let scalarIDs: [UInt32: Int32]
    /// Whole tokens by their UTF-8 bytes (for `ignore_merges`), built only when that is on.
    let bytesIDs: [[UInt8]: Int32]
    /// (left id << 32 | right id) → (rank << 32 | merged id).
    let merges: [UInt64: UInt64]
    /// Byte-level path: the id of the character that stands for each byte (-1: not in the vocabulary).
    let byteIDs: [Int32]
    /// The ids of `<0x00>` … `<0xFF>` when byte fallback is on (-1 where missing).
    let fallbackIDs: [Int32]
    let byteFallback: Bool
    let unknown: Int32?
    let fuseUnknown: Bool
    let ignoreMerges: Bool

    init(vocab: [String: Int32], merges pairs: [(String, String)], unknownToken: String?, byteFallback: Bool,
         fuseUnknown: Bool, ignoreMerges: Bool) throws(TokenizerError) {
        self.vocab = vocab
        let count = Int(vocab.values.max() ?? -1) + 1
        var tokens = [String](repeating: "", count: count)
        for (token, id) in vocab {
            guard id >= 0 else { throw .invalid("model.vocab: negative id \(id) for \(token)") }
            tokens[Int(id)] = token
        }
        self.tokens = tokens
        var scalarIDs: [UInt32: Int32] = [:]
        for (token, id) in vocab {
            let scalars = token.unicodeScalars
            if scalars.count == 1 { scalarIDs[scalars.first!.value] = id }
        }
        self.scalarIDs = scalarIDs
        bytesIDs = ignoreMerges ? Dictionary(vocab.map { (Array($0.key.utf8), $0.value) }, uniquingKeysWith: { a, _ in a }) : [:]
        var merges: [UInt64: UInt64] = [:]
        merges.reserveCapacity(pairs.count)
        for (rank, (left, right)) in pairs.enumerated() {
            guard let l = vocab[left], let r = vocab[right] else {
                throw .invalid("model.merges[\(rank)]: \"\(left) \(right)\" names a token that is not in the vocabulary")
            }
            guard let merged = vocab[left + right] else {
                throw .invalid("model.merges[\(rank)]: the merge of \"\(left) \(right)\" is not in the vocabulary")
            }
            let key = UInt64(UInt32(bitPattern: l)) << 32 | UInt64(UInt32(bitPattern: r))
            if merges[key] == nil { merges[key] = UInt64(rank) << 32 | UInt64(UInt32(bitPattern: merged)) }
        }
        self.merges = merges
        byteIDs = (0..<256).map { scalarIDs[ByteLevelAlphabet.scalar(for: UInt8($0)).value] ?? -1 }
        fallbackIDs = (0..<256).map { vocab[ByteLevelAlphabet.fallbackToken(UInt8($0))] ?? -1 }
        self.byteFallback = byteFallback
        if let unknownToken {
            guard let id = vocab[unknownToken] else { throw .invalid("model.unk_token \(unknownToken) is not in the vocabulary") }
            unknown = id
        } else {
            unknown = nil
        }
        self.fuseUnknown = fuseUnknown
        self.ignoreMerges = ignoreMerges
    }

    /// Appends the ids of a byte-level piece (its UTF-8 bytes).
    func encode(bytes: UnsafeBufferPointer<UInt8>, into out: inout [Int32], symbols: inout [Int32]) {
        if ignoreMerges {
            var word = ""
            for b in bytes { word.unicodeScalars.append(ByteLevelAlphabet.scalar(for: b)) }
            if let id = bytesIDs[Array(word.utf8)] { out.append(id); return }
        }
        symbols.removeAll(keepingCapacity: true)
        for b in bytes {
            let id = byteIDs[Int(b)]
            if id >= 0 { symbols.append(id) } else { appendUnknown(&symbols) }
        }
        merge(&symbols)
        out.append(contentsOf: symbols)
    }

    /// Appends the ids of a piece given as scalars (the SentencePiece-style path).
    func encode(scalars: ArraySlice<UInt32>, into out: inout [Int32], symbols: inout [Int32]) {
        if ignoreMerges {
            var word: [UInt8] = []
            for c in scalars { UTF8.encode(Unicode.Scalar(c)!) { word.append($0) } }
            if let id = bytesIDs[word] { out.append(id); return }
        }
        symbols.removeAll(keepingCapacity: true)
        var lastWasUnknown = false
        for c in scalars {
            let scalar = Unicode.Scalar(c)!
            if let id = scalarIDs[c] {
                symbols.append(id)
                lastWasUnknown = false
                continue
            }
            if byteFallback {
                var utf8: [UInt8] = []
                UTF8.encode(scalar) { utf8.append($0) }
                if utf8.allSatisfy({ fallbackIDs[Int($0)] >= 0 }) {
                    for b in utf8 { symbols.append(fallbackIDs[Int(b)]) }
                    lastWasUnknown = false
                    continue
                }
            }
            if let unknown {
                if !(fuseUnknown && lastWasUnknown) { symbols.append(unknown) }
                lastWasUnknown = true
            }
        }
        merge(&symbols)
        out.append(contentsOf: symbols)
    }

    private func appendUnknown(_ symbols: inout [Int32]) {
        guard let unknown else { return }
        if fuseUnknown, symbols.last == unknown { return }
        symbols.append(unknown)
    }

    @inline(__always)
    private func lookup(_ l: Int32, _ r: Int32) -> UInt64 {
        merges[UInt64(UInt32(bitPattern: l)) << 32 | UInt64(UInt32(bitPattern: r))] ?? UInt64.max
    }

    /// Merges the lowest-ranked adjacent pair, leftmost first, until none has a merge. Each pair's
    /// rank is looked up once and only the merged symbol's neighbours are looked up again.
    private func merge(_ symbols: inout [Int32]) {
        guard symbols.count > 1 else { return }
        if symbols.count == 2 {
            let m = lookup(symbols[0], symbols[1])
            if m != UInt64.max { symbols = [Int32(bitPattern: UInt32(truncatingIfNeeded: m))] }
            return
        }
        // ranks[i]: the merge of symbols[i] and symbols[i + 1] (UInt64.max: none).
        var ranks = [UInt64](repeating: 0, count: symbols.count - 1)
        for i in 0..<symbols.count - 1 { ranks[i] = lookup(symbols[i], symbols[i + 1]) }
        while !ranks.isEmpty {
            var best = 0
            var bestValue = ranks[0]
            for i in 1..<ranks.count where ranks[i] >> 32 < bestValue >> 32 {
                best = i
                bestValue = ranks[i]
            }
            if bestValue == UInt64.max { break }
            symbols[best] = Int32(bitPattern: UInt32(truncatingIfNeeded: bestValue))
            symbols.remove(at: best + 1)
            ranks.remove(at: best)
            if best > 0 { ranks[best - 1] = lookup(symbols[best - 1], symbols[best]) }
            if best < ranks.count { ranks[best] = lookup(symbols[best], symbols[best + 1]) }
        }
    }
}

/// GPT-2's byte-level alphabet: each byte stands for one printable character (the printable
/// Latin-1 bytes for themselves, the rest for U+0100 onwards), so that any byte string is text.
enum ByteLevelAlphabet {
    static let scalars: [Unicode.Scalar] = {
        var table = [Unicode.Scalar](repeating: " ", count: 256)
        var next: UInt32 = 256
        for b in 0..<256 {
            let printable = (0x21...0x7e).contains(b) || (0xa1...0xac).contains(b) || (0xae...0xff).contains(b)
            if printable {
                table[b] = Unicode.Scalar(UInt32(b))!
            } else {
                table[b] = Unicode.Scalar(next)!
                next += 1
            }
        }
        return table
    }()

    /// The byte each character of the alphabet stands for (indexed by scalar value, < 0x144).
    static let bytes: [Int16] = {
        var table = [Int16](repeating: -1, count: 0x144)
        for (b, s) in scalars.enumerated() { table[Int(s.value)] = Int16(b) }
        return table
    }()

    @inline(__always) static func scalar(for byte: UInt8) -> Unicode.Scalar { scalars[Int(byte)] }
    static func character(for byte: UInt8) -> Character { Character(scalars[Int(byte)]) }
    @inline(__always) static func byte(for scalar: UInt32) -> UInt8? {
        scalar < 0x144 && bytes[Int(scalar)] >= 0 ? UInt8(bytes[Int(scalar)]) : nil
    }

    /// `<0x0A>`: the piece byte fallback spells a byte with.
    static func fallbackToken(_ byte: UInt8) -> String {
        let hex = String(byte, radix: 16, uppercase: true)
        return "<0x" + (hex.count == 1 ? "0" + hex : hex) + ">"
    }
}
