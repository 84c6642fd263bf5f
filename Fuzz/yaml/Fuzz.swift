// Fuzz target `yaml`: the YAML reader (Sources/Kube/YAML.swift on libyaml, YAMLComposer.swift,
// YAMLScalarResolver.swift) and writer (YAMLWriter.swift, `JSONValue.yaml`).
//
// The input is YAML text (decoded as UTF-8 with replacement, as a manifest file read into a
// String is). Besides crashes it checks the writer's documented promise, `YAML.parse(value.yaml)`
// gives `value` back for any value without NaN, for every document read, and for the input read
// as JSON when it is JSON (JSON escapes reach strings that YAML input rarely produces).
import JSON
import Kube

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    let text = String(decoding: bytes, as: UTF8.self)
    if let documents = try? YAML.parseDocuments(text) {
        // Aliases let a few hundred bytes stand for up to YAML.maximumAliasExpansion nodes; writing
        // and reading back such a value takes seconds under ASan, so only smaller ones are checked.
        let small = documents.allSatisfy { $0.nodeCount(upTo: 20_000) <= 20_000 }
        guard small else { return 0 }
        for document in documents { checkRoundTrip(document, from: "YAML") }
        // `parse` is the one-document form of the same reader.
        switch Result(catching: { () throws(YAMLError) in try YAML.parse(text) }) {
        case .success(let one): require(documents.count <= 1 && (documents.first ?? .null).sameAs(one), "parse and parseDocuments disagree")
        case .failure: require(documents.count > 1, "parse fails on a stream parseDocuments reads as one document")
        }
    }
    if let value = try? JSONValue.parse(bytes: bytes) { checkRoundTrip(value, from: "JSON") }
    return 0
}

func checkRoundTrip(_ value: JSONValue, from source: String) {
    guard !value.hasNaN else { return }
    let yaml = value.yaml
    let again: JSONValue
    do { again = try YAML.parse(yaml) } catch { fatalError("YAML written for a value read from \(source) does not read back (\(error)):\n\(yaml.prefix(400))") }
    if again != value { fatalError("YAML written for a value read from \(source) reads back as another value:\n\(yaml.prefix(400))\nwas \(value.compact.prefix(400))\nnow \(again.compact.prefix(400))") }
}

extension JSONValue {
    /// The number of nodes, counted up to a little past `limit`.
    func nodeCount(upTo limit: Int) -> Int {
        var count = 0
        var stack = [self]
        while let value = stack.popLast(), count <= limit {
            count += 1
            switch value {
            case .array(let items): stack.append(contentsOf: items)
            case .object(let fields): stack.append(contentsOf: fields.values)
            default: break
            }
        }
        return count
    }

    var hasNaN: Bool {
        switch self {
        case .double(let number): number.isNaN
        case .array(let items): items.contains(where: \.hasNaN)
        case .object(let fields): fields.values.contains(where: \.hasNaN)
        default: false
        }
    }

    /// Equality that holds for NaN too.
    func sameAs(_ other: JSONValue) -> Bool {
        switch (self, other) {
        case (.double(let a), .double(let b)): a == b || (a.isNaN && b.isNaN)
        case (.array(let a), .array(let b)): a.count == b.count && zip(a, b).allSatisfy { $0.sameAs($1) }
        case (.object(let a), .object(let b)): a.count == b.count && a.allSatisfy { key, value in b[key].map { value.sameAs($0) } ?? false }
        default: self == other
        }
    }
}
