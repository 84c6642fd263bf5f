import Foundation
import JSON
import Testing

@Suite("JSONValue: parser and writers")
struct JSONTests {
    @Test("Integers, fractions, booleans and null keep their kind", arguments: [
        ("0", JSONValue.int(0)), ("-12", .int(-12)), ("1.0", .double(1.0)), ("2e3", .double(2000)), ("-0.5E-1", .double(-0.05)),
        ("true", .bool(true)), ("false", .bool(false)), ("null", .null), ("9223372036854775807", .int(Int.max)),
        ("9223372036854775808", .double(9223372036854775808)),
    ])
    func scalars(text: String, value: JSONValue) throws {
        #expect(try JSONValue.parse(text) == value)
    }

    @Test("Strings: escapes, surrogate pairs, raw UTF-8")
    func strings() throws {
        #expect(try JSONValue.parse(#""a\"b\\c\/d\n\t\u00e9\ud83d\ude00""#) == .string("a\"b\\c/d\n\té😀"))
        #expect(try JSONValue.parse("\"héllo\"") == .string("héllo"))
        let tricky = JSONValue.string("quote\" back\\ nl\n ctl\u{01} é")
        #expect(try JSONValue.parse(tricky.compact) == tricky)
    }

    @Test("Objects and arrays round-trip through the compact and the pretty writer")
    func roundTrip() throws {
        let value: JSONValue = ["metadata": ["name": "x", "labels": ["a": "b"]], "items": [1, 2.5, "three", nil as JSONValue? ?? .null, true, [:], []]]
        #expect(try JSONValue.parse(value.compact) == value)
        #expect(try JSONValue.parse(value.serialized()) == value)
    }

    @Test("Malformed documents are refused with the byte offset", arguments: [
        ("", 0), ("{", 1), ("[1,]", 3), ("{\"a\" 1}", 5), ("01", 1), ("1.", 2), ("\"\\x\"", 3), ("\"a", 2), ("[1] x", 4),
        ("\"\\ud800\"", 7), ("tru", 0), ("-", 1), ("\"a\u{01}\"", 2),
    ])
    func malformed(text: String, offset: Int) {
        #expect { try JSONValue.parse(text) } throws: { ($0 as? JSONParseError)?.offset == offset }
    }

    @Test("Nesting deeper than 512 levels is refused, not a stack overflow")
    func depth() throws {
        #expect(throws: JSONParseError.self) { try JSONValue.parse(String(repeating: "[", count: 100_000)) }
        #expect(try JSONValue.parse(String(repeating: "[", count: 500) + String(repeating: "]", count: 500)) != .null)
    }

    @Test("Path subscripts read and write nested members")
    func paths() {
        var value: JSONValue = [:]
        value[path: ["spec", "template", "replicas"]] = 3
        #expect(value[path: ["spec", "template", "replicas"]]?.int == 3)
        value[path: ["spec", "template", "replicas"]] = nil
        #expect(value[path: ["spec", "template"]] == [:])
    }
}
