import JSON

/// One step of a field path, as `managedFields` writes it: `f:name` a member of an object,
/// `k:{"name":"web"}` the element of a keyed list, `v:"x"` a value of a set list, `i:0` an element
/// by position.
enum FieldPathElement: Hashable, Sendable {
    case field(String)
    case key([String: JSONValue])
    case value(JSONValue)
    case index(Int)

    /// The key of this step in a `fieldsV1` object.
    var fieldsV1Key: String {
        switch self {
        case .field(let name): "f:" + name
        case .key(let members): "k:{" + members.keys.sorted().map { JSONValue.quoted($0) + ":" + members[$0]!.compact }.joined(separator: ",") + "}"
        case .value(let value): "v:" + value.compact
        case .index(let index): "i:\(index)"
        }
    }

    init?(fieldsV1Key key: String) {
        let body = String(key.dropFirst(2))
        switch key.prefix(2) {
        case "f:": self = .field(body)
        case "k:":
            guard case .object(let members)? = try? JSONValue.parse(body) else { return nil }
            self = .key(members)
        case "v:":
            guard let value = try? JSONValue.parse(body) else { return nil }
            self = .value(value)
        case "i:":
            guard let index = Int(body) else { return nil }
            self = .index(index)
        default: return nil
        }
    }

    /// How Kubernetes writes this step in a conflict message: `.image`, `[name="web"]`, `[="x"]`, `[0]`.
    var pathDescription: String {
        switch self {
        case .field(let name): "." + name
        case .key(let members): "[" + members.keys.sorted().map { $0 + "=" + members[$0]!.compact }.joined(separator: ",") + "]"
        case .value(let value): "[=" + value.compact + "]"
        case .index(let index): "[\(index)]"
        }
    }
}

typealias FieldPath = [FieldPathElement]

func describe(_ path: FieldPath) -> String { path.map(\.pathDescription).joined() }

/// A set of field paths, kept as the trie `fieldsV1` is written as: each node is one path, and is in
/// the set itself when it is a leaf or is marked with `"."` (a list element that someone owns as a
/// whole as well as its fields).
struct FieldSet: Hashable, Sendable {
    /// Whether the path that leads to this node is in the set.
    var containsSelf = false
    var children: [FieldPathElement: FieldSet] = [:]

    init() {}

    /// A set of one path, the one that leads here.
    static let leaf: FieldSet = { var set = FieldSet(); set.containsSelf = true; return set }()

    /// Reads a `fieldsV1` trie; parts it cannot read are left out.
    init(fieldsV1: JSONValue) {
        self.init(node: fieldsV1)
        containsSelf = false  // `{}` at the top is the empty set, not "the whole object"
    }

    private init(node: JSONValue) {
        guard case .object(let members) = node else { return }
        if members.isEmpty { containsSelf = true; return }
        for (key, value) in members {
            if key == "." { containsSelf = true; continue }
            guard let element = FieldPathElement(fieldsV1Key: key) else { continue }
            let child = FieldSet(node: value)
            if !child.isEmpty { children[element] = child }
        }
    }

    var isEmpty: Bool { !containsSelf && children.isEmpty }

    /// The set as a `fieldsV1` trie.
    var fieldsV1: JSONValue {
        var members: [String: JSONValue] = [:]
        if containsSelf && !children.isEmpty { members["."] = .object([:]) }
        for (element, child) in children { members[element.fieldsV1Key] = child.fieldsV1 }
        return .object(members)
    }

    /// The node for `path`, if any path at or below it is in the set.
    func node(at path: some Collection<FieldPathElement>) -> FieldSet? {
        guard let first = path.first else { return isEmpty ? nil : self }
        return children[first]?.node(at: path.dropFirst())
    }

    func contains(_ path: some Collection<FieldPathElement>) -> Bool { node(at: path)?.containsSelf ?? false }

    /// Whether the set has `path` or anything below it.
    func hasAnything(atOrBelow path: some Collection<FieldPathElement>) -> Bool { node(at: path) != nil }

    /// Every path in the set, parents before their children, siblings in `fieldsV1` key order.
    var paths: [FieldPath] {
        var result: [FieldPath] = containsSelf ? [[]] : []
        for element in children.keys.sorted(by: { $0.fieldsV1Key < $1.fieldsV1Key }) {
            result += children[element]!.paths.map { [element] + $0 }
        }
        return result
    }

    /// Paths in the set with nothing below them: the values themselves rather than their containers.
    var isLeaf: Bool { children.isEmpty }

    mutating func insert(_ path: some Collection<FieldPathElement>) {
        guard let first = path.first else { containsSelf = true; return }
        children[first, default: FieldSet()].insert(path.dropFirst())
    }

    /// Takes `path` and everything below it out of the set.
    mutating func removeSubtree(at path: some Collection<FieldPathElement>) {
        guard let first = path.first else { self = FieldSet(); return }
        guard var child = children[first] else { return }
        child.removeSubtree(at: path.dropFirst())
        children[first] = child.isEmpty ? nil : child
    }

    func union(_ other: FieldSet) -> FieldSet {
        var result = self
        result.containsSelf = containsSelf || other.containsSelf
        for (element, child) in other.children {
            result.children[element] = children[element].map { $0.union(child) } ?? child
        }
        return result
    }

    func subtracting(_ other: FieldSet) -> FieldSet {
        var result = FieldSet()
        result.containsSelf = containsSelf && !other.containsSelf
        for (element, child) in children {
            let rest = other.children[element].map { child.subtracting($0) } ?? child
            if !rest.isEmpty { result.children[element] = rest }
        }
        return result
    }
}
