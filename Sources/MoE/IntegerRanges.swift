/// Compact text for sets of indices (layers, experts), as people write them: `0-3,5,7-9`.
public enum IntegerRanges {
    /// Sorted, de-duplicated `values` as comma-separated ids and inclusive ranges; `none` when empty.
    public static func format(_ values: [Int]) -> String {
        let sorted = Array(Set(values)).sorted()
        guard !sorted.isEmpty else { return "none" }
        var parts: [String] = []
        var i = 0
        while i < sorted.count {
            var j = i
            while j + 1 < sorted.count, sorted[j + 1] == sorted[j] + 1 { j += 1 }
            parts.append(i == j ? "\(sorted[i])" : "\(sorted[i])-\(sorted[j])")
            i = j + 1
        }
        return parts.joined(separator: ",")
    }
}
