/// Tokens matched in the text before the model sees it (`added_tokens`): `<|im_start|>`, `<s>` …
/// Matching is leftmost-longest, as tokenizers' Aho-Corasick matcher does; tokens marked
/// `normalized: false` are matched in the raw text, the others in the normalized text.
struct AddedToken: Sendable {
    let id: Int32
    let content: String
    let special: Bool
    let normalized: Bool
    let leftStrip: Bool
    let rightStrip: Bool
}

/// A trie over the scalars of a set of added tokens.
struct AddedTokenMatcher: Sendable {
    private struct Node: Sendable {
        var children: [UInt32: Int32] = [:]
        var token: Int32 = -1  // index into `tokens`
    }

    private var nodes = [Node()]
    private(set) var tokens: [AddedToken] = []

    var isEmpty: Bool { tokens.isEmpty }

    init(_ tokens: [AddedToken]) {
        for token in tokens where !token.content.isEmpty { insert(token) }
    }

    private mutating func insert(_ token: AddedToken) {
        var node = 0
        for s in token.content.unicodeScalars {
            if let next = nodes[node].children[s.value] {
                node = Int(next)
            } else {
                nodes.append(Node())
                nodes[node].children[s.value] = Int32(nodes.count - 1)
                node = nodes.count - 1
            }
        }
        if nodes[node].token < 0 {
            nodes[node].token = Int32(tokens.count)
            tokens.append(token)
        }
    }

    /// The longest token starting at `start` in `text[..<end]`: its index and end.
    @inline(__always)
    private func longest(in text: [UInt32], at start: Int, end: Int) -> (token: Int, end: Int)? {
        var node = 0
        var best: (Int, Int)? = nil
        var i = start
        while i < end, let next = nodes[node].children[text[i]] {
            node = Int(next)
            i += 1
            if nodes[node].token >= 0 { best = (Int(nodes[node].token), i) }
        }
        return best
    }

    /// Splits `text[range]` into stretches of plain text and matched tokens, in order. With
    /// lstrip/rstrip a token also takes the whitespace beside it.
    func split(_ text: [UInt32], _ range: Range<Int>) -> [(range: Range<Int>, token: AddedToken?)] {
        guard !isEmpty else { return [(range, nil)] }
        var out: [(Range<Int>, AddedToken?)] = []
        var plainStart = range.lowerBound
        var i = range.lowerBound
        while i < range.upperBound {
            guard nodes[0].children[text[i]] != nil, let hit = longest(in: text, at: i, end: range.upperBound) else {
                i += 1
                continue
            }
            let token = tokens[hit.token]
            var matchStart = i
            var matchEnd = hit.end
            if token.leftStrip { while matchStart > plainStart && UnicodeTable.isWhitespace(text[matchStart - 1]) { matchStart -= 1 } }
            if token.rightStrip { while matchEnd < range.upperBound && UnicodeTable.isWhitespace(text[matchEnd]) { matchEnd += 1 } }
            if plainStart < matchStart { out.append((plainStart..<matchStart, nil)) }
            out.append((matchStart..<matchEnd, token))
            plainStart = matchEnd
            i = matchEnd
        }
        if plainStart < range.upperBound { out.append((plainStart..<range.upperBound, nil)) }
        return out
    }
}
