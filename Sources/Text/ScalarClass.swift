/// A set of Unicode scalars, as a regex character class names it: ASCII members in a bitmap,
/// general categories (`\p{L}`), explicit ranges, `\s`, and a negation. Tests are the pre-tokenizers'
/// inner loop, so the category of every BMP scalar is looked up in one table built once.
struct ScalarClass: Sendable, Hashable {
    /// ASCII members (bit `c` of `ascii.0` for c < 64, of `ascii.1` for 64 ≤ c < 128).
    var asciiLow: UInt64 = 0
    var asciiHigh: UInt64 = 0
    /// General categories (bit `UnicodeTable.categoryIndex`) whose scalars are members.
    var categories: UInt32 = 0
    /// White_Space scalars are members (`\s`).
    var whitespace = false
    /// Explicit non-ASCII ranges, inclusive.
    var ranges: [ClosedRange<UInt32>] = []
    var negated = false

    mutating func add(_ range: ClosedRange<UInt32>) {
        var lower = range.lowerBound
        while lower <= range.upperBound && lower < 128 {
            if lower < 64 { asciiLow |= 1 << UInt64(lower) } else { asciiHigh |= 1 << UInt64(lower - 64) }
            lower += 1
        }
        if lower <= range.upperBound { ranges.append(lower...range.upperBound) }
    }

    mutating func add(_ other: ScalarClass) {
        precondition(!other.negated, "a negated class is folded in by its caller")
        asciiLow |= other.asciiLow
        asciiHigh |= other.asciiHigh
        categories |= other.categories
        whitespace = whitespace || other.whitespace
        ranges += other.ranges
    }

    /// Folds the categories and `\s` into the ASCII bitmap, so ASCII tests are one bit test.
    mutating func finish() {
        for c in UInt32(0)..<128 where categories & (1 << UInt32(UnicodeTable.category(c))) != 0
            || (whitespace && UnicodeTable.isWhitespace(c)) {
            if c < 64 { asciiLow |= 1 << UInt64(c) } else { asciiHigh |= 1 << UInt64(c - 64) }
        }
    }

    @inline(__always)
    func contains(_ c: UInt32) -> Bool {
        if c < 128 {
            let hit = c < 64 ? (asciiLow >> UInt64(c)) & 1 != 0 : (asciiHigh >> UInt64(c - 64)) & 1 != 0
            return hit != negated
        }
        var hit = categories != 0 && categories & (1 << UInt32(UnicodeTable.category(c))) != 0
        if !hit && whitespace { hit = UnicodeTable.isWhitespace(c) }
        if !hit { for r in ranges where r.contains(c) { hit = true; break } }
        return hit != negated
    }
}

/// General categories and White_Space of every scalar: a table for the BMP, the standard library's
/// properties above it.
enum UnicodeTable {
    /// The general categories in a fixed order; a class names them by bit.
    static let categoryNames: [String] = [
        "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po",
        "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Cn",
    ]

    /// The category bits a `\p{…}` name stands for ("L", "Lu", "Letter" …), nil if unknown.
    static func categoryMask(named name: String) -> UInt32? {
        let long: [String: String] = [
            "Letter": "L", "Mark": "M", "Number": "N", "Punctuation": "P", "Symbol": "S", "Separator": "Z",
            "Other": "C", "Uppercase_Letter": "Lu", "Lowercase_Letter": "Ll", "Decimal_Number": "Nd",
        ]
        let short = long[name] ?? name
        var mask: UInt32 = 0
        for (i, n) in categoryNames.enumerated() where n == short || (short.count == 1 && n.hasPrefix(short)) {
            mask |= 1 << UInt32(i)
        }
        return mask == 0 ? nil : mask
    }

    private static func computeCategory(_ c: UInt32) -> UInt8 {
        guard let scalar = Unicode.Scalar(c) else { return 27 }  // a surrogate: Cs
        switch scalar.properties.generalCategory {
        case .uppercaseLetter: return 0
        case .lowercaseLetter: return 1
        case .titlecaseLetter: return 2
        case .modifierLetter: return 3
        case .otherLetter: return 4
        case .nonspacingMark: return 5
        case .spacingMark: return 6
        case .enclosingMark: return 7
        case .decimalNumber: return 8
        case .letterNumber: return 9
        case .otherNumber: return 10
        case .connectorPunctuation: return 11
        case .dashPunctuation: return 12
        case .openPunctuation: return 13
        case .closePunctuation: return 14
        case .initialPunctuation: return 15
        case .finalPunctuation: return 16
        case .otherPunctuation: return 17
        case .mathSymbol: return 18
        case .currencySymbol: return 19
        case .modifierSymbol: return 20
        case .otherSymbol: return 21
        case .spaceSeparator: return 22
        case .lineSeparator: return 23
        case .paragraphSeparator: return 24
        case .control: return 25
        case .format: return 26
        case .surrogate: return 27
        case .privateUse: return 28
        case .unassigned: return 29
        @unknown default: return 29
        }
    }

    /// Per BMP scalar: the category index in the low 5 bits, White_Space in bit 7.
    private static let bmp: [UInt8] = {
        var table = [UInt8](repeating: 0, count: 0x10000)
        for c in 0..<0x10000 {
            var entry = computeCategory(UInt32(c))
            if let s = Unicode.Scalar(UInt32(c)), s.properties.isWhitespace { entry |= 0x80 }
            table[c] = entry
        }
        return table
    }()

    @inline(__always)
    static func category(_ c: UInt32) -> UInt8 {
        c < 0x10000 ? bmp[Int(c)] & 0x1f : computeCategory(c)
    }

    @inline(__always)
    static func isWhitespace(_ c: UInt32) -> Bool {
        c < 0x10000 ? bmp[Int(c)] & 0x80 != 0 : (Unicode.Scalar(c)?.properties.isWhitespace ?? false)
    }

    /// Rust's `char::is_numeric` (categories Nd, Nl, No), which the Digits pre-tokenizer uses.
    @inline(__always)
    static func isNumeric(_ c: UInt32) -> Bool {
        let k = category(c)
        return k >= 8 && k <= 10
    }
}
