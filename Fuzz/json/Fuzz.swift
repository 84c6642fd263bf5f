// Fuzz target `json`: the JSON parser (Sources/JSON/JSONParser.swift) and the two writers
// (`compact`, `serialized()`) of Sources/JSON/JSONValue.swift.
//
// The input is a JSON document (any bytes). Besides crashes it checks: the byte, `Data` and
// `String` entry points agree; and whatever parses reads back equal from both writers' text
// (with non-finite doubles, from numbers such as 1e400, compared as the `null` the writers emit).
import Foundation
import JSON

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    let parsed = Result { () throws(JSONParseError) in try JSONValue.parse(bytes: bytes) }
    let fromData = Result { () throws(JSONParseError) in try JSONValue.parse(Data(bytes)) }
    require(sameOutcome(parsed, fromData), "parse(bytes:) and parse(Data) disagree")
    if let text = String(validating: bytes, as: UTF8.self) {
        require(sameOutcome(parsed, Result { () throws(JSONParseError) in try JSONValue.parse(text) }), "parse(bytes:) and parse(String) disagree")
    }
    guard case .success(let value) = parsed else { return 0 }
    let expected = value.finite
    for (writer, text) in [("compact", value.compact), ("serialized", value.serialized())] {
        let again: JSONValue
        do { again = try JSONValue.parse(text) } catch { fatalError("\(writer) wrote text that does not parse (\(error)): \(text.prefix(200))") }
        if again != expected { fatalError("\(writer) text reads back as another value: \(text.prefix(200))") }
    }
    return 0
}

func sameOutcome(_ a: Result<JSONValue, JSONParseError>, _ b: Result<JSONValue, JSONParseError>) -> Bool {
    switch (a, b) {
    case (.success(let x), .success(let y)): x == y
    case (.failure(let x), .failure(let y)): x.offset == y.offset && x.message == y.message
    default: false
    }
}

extension JSONValue {
    /// This value as the writers put it: infinite doubles become `null`.
    var finite: JSONValue {
        switch self {
        case .double(let number) where !number.isFinite: .null
        case .array(let items): .array(items.map(\.finite))
        case .object(let fields): .object(fields.mapValues(\.finite))
        default: self
        }
    }
}
