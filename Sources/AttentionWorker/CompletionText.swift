import Text

/// One choice's text as its tokens arrive: whole characters only (the incremental decoder), and
/// cut at the first stop string, which may span tokens and is not part of the text. Text that
/// could still become a stop string is held back until it cannot.
struct CompletionText {
    private var decoder: IncrementalDecoder
    private let stops: [[Unicode.Scalar]]
    private var pending: [Unicode.Scalar] = []
    private(set) var stopped = false
    /// Everything emitted so far.
    private(set) var text = ""

    init(tokenizer: Tokenizer, stops: [String]) {
        decoder = IncrementalDecoder(tokenizer: tokenizer, skipSpecialTokens: true)
        self.stops = stops.map { Array($0.unicodeScalars) }.filter { !$0.isEmpty }
    }

    /// The text `token` adds, and whether a stop string has now been seen (then nothing more comes).
    mutating func append(_ token: Int) -> String {
        guard !stopped else { return "" }
        return take(decoder.append(token), final: false)
    }

    /// The rest at the end of the sequence (characters held back for a stop string that never came).
    mutating func finish() -> String {
        guard !stopped else { return "" }
        return take(decoder.finish(), final: true)
    }

    private mutating func take(_ piece: String, final: Bool) -> String {
        pending += piece.unicodeScalars
        var cut: Int? = nil
        for stop in stops where stop.count <= pending.count {
            for start in 0...(pending.count - stop.count) where pending[start] == stop[0] && pending[start..<start + stop.count].elementsEqual(stop) {
                cut = min(cut ?? start, start)
                break
            }
        }
        var emitCount: Int
        if let cut {
            emitCount = cut
            stopped = true
        } else if final {
            emitCount = pending.count
        } else {
            // Hold back the longest tail that is the start of some stop string.
            var hold = 0
            for stop in stops {
                for n in stride(from: min(stop.count - 1, pending.count), to: hold, by: -1)
                    where pending[(pending.count - n)...].elementsEqual(stop[0..<n]) {
                    hold = n
                    break
                }
            }
            emitCount = pending.count - hold
        }
        var out = String.UnicodeScalarView()
        out.append(contentsOf: pending[0..<emitCount])
        pending.removeFirst(emitCount)
        if stopped { pending.removeAll() }
        let s = String(out)
        text += s
        return s
    }
}
