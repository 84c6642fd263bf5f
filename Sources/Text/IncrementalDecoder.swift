/// Text for a stream of generated ids, one piece per id, holding back an incomplete UTF-8 sequence
/// (a byte-level token that is half an emoji) until the token that completes it arrives. The pieces
/// joined equal `decode` of all the ids.
///
/// Each step decodes a short window (the previous token or so and the new ones) twice, with and
/// without the new ids, and emits the difference, so the cost per token does not grow with the
/// text; a decoder that strips a leading space (SentencePiece's) sees the same first token in both
/// decodes, so the space between words survives.
public struct IncrementalDecoder: Sendable {
    public let tokenizer: Tokenizer
    public let skipSpecialTokens: Bool
    private(set) var ids: [Int] = []
    /// ids[prefixOffset..<readOffset] were emitted already and give the window its context.
    private var prefixOffset = 0
    private var readOffset = 0

    public init(tokenizer: Tokenizer, skipSpecialTokens: Bool = true) {
        self.tokenizer = tokenizer
        self.skipSpecialTokens = skipSpecialTokens
    }

    /// The new text that `id` completes ("" while a character is still incomplete).
    public mutating func append(_ id: Int) -> String {
        ids.append(id)
        let before = tokenizer.decode(Array(ids[prefixOffset..<readOffset]), skipSpecialTokens: skipSpecialTokens).unicodeScalars
        let after = tokenizer.decode(Array(ids[prefixOffset...]), skipSpecialTokens: skipSpecialTokens).unicodeScalars
        // A trailing U+FFFD is a character still waiting for its other bytes.
        guard after.count > before.count, after.last != "\u{FFFD}" else { return "" }
        prefixOffset = readOffset
        readOffset = ids.count
        return String(String.UnicodeScalarView(after.dropFirst(before.count)))
    }

    /// What is left when the stream ends: held-back bytes that never became a character come out as
    /// U+FFFD, as `decode` writes them.
    public mutating func finish() -> String {
        let before = tokenizer.decode(Array(ids[prefixOffset..<readOffset]), skipSpecialTokens: skipSpecialTokens).unicodeScalars
        let after = tokenizer.decode(Array(ids[prefixOffset...]), skipSpecialTokens: skipSpecialTokens).unicodeScalars
        prefixOffset = ids.count
        readOffset = ids.count
        return after.count > before.count ? String(String.UnicodeScalarView(after.dropFirst(before.count))) : ""
    }
}
