import MoE

/// Which experts an expert pod serves: `EXPERTS[@LAYERS]`, each a comma-separated list of ids and
/// inclusive ranges (`0,1` = experts 0 and 1 of every MoE layer; `4-7@0-11` = experts 4 to 7 of
/// layers 0 to 11).
public struct ShardSpec: Sendable, Equatable, CustomStringConvertible {
    /// Expert ids, ascending.
    public let experts: [Int]
    /// MoE layer indices, ascending; nil means every MoE layer.
    public let layers: [Int]?

    /// A spec that does not parse; the message quotes the offending part.
    public struct ParseError: Error, CustomStringConvertible, Sendable, Equatable {
        public let description: String
    }

    public init(parsing text: String) throws {
        let parts = text.split(separator: "@", omittingEmptySubsequences: false)
        guard parts.count <= 2 else { throw ParseError(description: "shard '\(text)': more than one '@'") }
        experts = try Self.parseList(String(parts[0]), what: "experts", in: text)
        layers = parts.count == 2 ? try Self.parseList(String(parts[1]), what: "layers", in: text) : nil
    }

    /// Whether the shard serves expert `expert` of MoE layer `layer`.
    public func contains(layer: Int, expert: Int) -> Bool {
        experts.contains(expert) && (layers?.contains(layer) ?? true)
    }

    public var description: String {
        let e = IntegerRanges.format(experts)
        guard let layers else { return e }
        return e + "@" + IntegerRanges.format(layers)
    }

    private static func parseList(_ text: String, what: String, in whole: String) throws -> [Int] {
        guard !text.isEmpty else { throw ParseError(description: "shard '\(whole)': empty list of \(what)") }
        var values = Set<Int>()
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            let bounds = item.split(separator: "-", omittingEmptySubsequences: false)
            guard bounds.count <= 2, let low = Int(bounds[0]), low >= 0,
                  let high = bounds.count == 2 ? Int(bounds[1]) : low, high >= low else {
                throw ParseError(description: "shard '\(whole)': '\(item)' is not an id or an ascending range of \(what)")
            }
            values.formUnion(low...high)
        }
        return values.sorted()
    }
}
