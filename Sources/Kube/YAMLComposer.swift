import JSON

/// Builds `JSONValue`s from libyaml's events. Open sequences and mappings are kept on an explicit
/// stack rather than the call stack, so deep input costs heap, not stack, up to `YAML.maximumDepth`.
struct YAMLComposer {
    /// The non-empty documents read so far.
    private(set) var documents: [YAMLDocument] = []

    private var documentStart = YAMLMark(line: 1, column: 1)
    private var root: Node?
    private var open: [OpenCollection] = []
    /// Anchored nodes of the current document (anchors do not reach across `---`).
    private var anchors: [String: Node] = [:]
    private var aliasExpansion = 0

    /// A finished node: its value, what it stands for in the alias budget, and its text when it
    /// is a scalar (mapping keys are the scalar's text, so `0x1F: a` has the key "0x1F").
    private struct Node {
        var value: JSONValue
        var nodeCount: Int
        var keyText: String?
        var isMergeKey = false
        var mark: YAMLMark
    }

    private enum PendingKey {
        case field(String)
        case merge
    }

    private struct OpenCollection {
        let isMapping: Bool
        let anchor: String?
        let mark: YAMLMark
        var items: [JSONValue] = []
        var fields: [String: JSONValue] = [:]
        /// Mappings from `<<` keys, first listed first; their keys fill in what `fields` lacks.
        var merged: [[String: JSONValue]] = []
        /// The key read last, waiting for its value.
        var pendingKey: PendingKey?
        var nodeCount = 1

        var value: JSONValue {
            guard isMapping else { return .array(items) }
            var result = fields
            for mapping in merged {
                for (key, value) in mapping where result[key] == nil { result[key] = value }
            }
            return .object(result)
        }
    }

    mutating func consume(_ event: YAMLEvent) throws(YAMLError) {
        switch event {
        case .documentStart(let mark):
            documentStart = mark
            root = nil
            anchors = [:]
        case .documentEnd:
            if let root, !root.value.isNull { documents.append(YAMLDocument(value: root.value, start: documentStart)) }
        case .scalar(let scalar):
            let value = try YAMLScalarResolver.value(of: scalar)
            let isMergeKey = scalar.tag == YAMLScalarResolver.mergeTag
                || (scalar.tag == nil && scalar.isPlain && scalar.text == "<<")
            try attach(Node(value: value, nodeCount: 1, keyText: scalar.text, isMergeKey: isMergeKey, mark: scalar.mark),
                       anchor: scalar.anchor)
        case .alias(let anchor, let mark):
            guard var node = anchors[anchor] else {
                if open.contains(where: { $0.anchor == anchor }) {
                    throw YAMLError("alias *\(anchor) refers to a node that contains it", at: mark)
                }
                throw YAMLError("alias *\(anchor) refers to an unknown anchor", at: mark)
            }
            aliasExpansion += node.nodeCount
            if aliasExpansion > YAML.maximumAliasExpansion {
                throw YAMLError("aliases expand to more than \(YAML.maximumAliasExpansion) nodes", at: mark)
            }
            node.mark = mark
            try attach(node, anchor: nil)
        case .sequenceStart(let anchor, let mark), .mappingStart(let anchor, let mark):
            if open.count >= YAML.maximumDepth {
                throw YAMLError("nested deeper than \(YAML.maximumDepth) levels", at: mark)
            }
            var isMapping = false
            if case .mappingStart = event { isMapping = true }
            open.append(OpenCollection(isMapping: isMapping, anchor: anchor, mark: mark))
        case .sequenceEnd, .mappingEnd:
            let collection = open.removeLast()
            try attach(Node(value: collection.value, nodeCount: collection.nodeCount, keyText: nil, mark: collection.mark),
                       anchor: collection.anchor)
        case .none:
            break
        }
    }

    /// Puts a finished node where it belongs: the document's root, the next item of the open
    /// sequence, or the next key or value of the open mapping.
    private mutating func attach(_ node: Node, anchor: String?) throws(YAMLError) {
        if let anchor { anchors[anchor] = node }
        guard !open.isEmpty else {
            root = node
            return
        }
        let top = open.count - 1
        open[top].nodeCount += node.nodeCount
        guard open[top].isMapping else {
            open[top].items.append(node.value)
            return
        }
        switch open[top].pendingKey {
        case .field(let key):
            open[top].fields[key] = node.value
            open[top].pendingKey = nil
        case .merge:
            open[top].merged += try mergedMappings(node)
            open[top].pendingKey = nil
        case nil:
            if node.isMergeKey {
                open[top].pendingKey = .merge
                return
            }
            guard let key = node.keyText else {
                throw YAMLError("mapping keys must be scalars, not a sequence or mapping", at: node.mark)
            }
            if open[top].fields[key] != nil {
                throw YAMLError("duplicate key \(JSONValue.quoted(key))", at: node.mark)
            }
            open[top].pendingKey = .field(key)
        }
    }

    /// The mappings a `<<` key's value brings: one mapping, or a list of them (earlier ones win).
    private func mergedMappings(_ node: Node) throws(YAMLError) -> [[String: JSONValue]] {
        switch node.value {
        case .object(let fields): return [fields]
        case .array(let items):
            var mappings: [[String: JSONValue]] = []
            for item in items {
                guard case .object(let fields) = item else { break }
                mappings.append(fields)
            }
            if mappings.count == items.count { return mappings }
        default: break
        }
        throw YAMLError("the value of a merge key (<<) must be a mapping or a list of mappings", at: node.mark)
    }
}
