import CYAML
import JSON

/// Reads YAML into `JSONValue`, the way Kubernetes tooling (sigs.k8s.io/yaml on go-yaml v2) does:
/// YAML 1.1 types for plain scalars (`on` is `true`, `017` is 15), anchors and aliases expanded,
/// merge keys (`<<`) applied, duplicate keys refused.
///
/// libyaml's event parser does the scanning; `YAMLComposer` builds the values and
/// `YAMLScalarResolver` types the scalars. `JSONValue.yaml` writes YAML back.
public enum YAML {
    /// Deepest nesting of sequences and mappings accepted; libyaml 0.2.5 has no limit of its own.
    static let maximumDepth = 512
    /// Most nodes that aliases may expand to in one call, against "billion laughs" input whose
    /// few lines of aliases stand for billions of nodes.
    static let maximumAliasExpansion = 1_000_000

    /// Every document of a `---` separated stream (a kubectl-style manifest), in order.
    /// Empty documents (nothing between two `---`, a trailing `---`, or a document that is only
    /// `null`) are left out, as kubectl leaves them out.
    public static func parseDocuments(_ text: String) throws(YAMLError) -> [JSONValue] {
        try readDocuments(text).map(\.value)
    }

    /// The one document in `text`; `.null` when there is none (empty input, only comments).
    /// More than one non-empty document is an error.
    public static func parse(_ text: String) throws(YAMLError) -> JSONValue {
        let documents = try readDocuments(text)
        if documents.count > 1 {
            throw YAMLError("expected one YAML document, found \(documents.count)", at: documents[1].start)
        }
        return documents.first?.value ?? .null
    }

    /// Runs libyaml over `text`, handing each event to the composer as soon as it is read (so
    /// the depth and alias limits stop the parse early). The parser reads `text`'s bytes in place,
    /// so the whole parse stays inside `withUTF8`.
    static func readDocuments(_ text: String) throws(YAMLError) -> [YAMLDocument] {
        var text = text
        // `withUTF8` only rethrows untyped errors, so the typed error comes out as a `Result`.
        return try text.withUTF8 { bytes in Result { () throws(YAMLError) in try readDocuments(utf8: bytes) } }.get()
    }

    private static func readDocuments(utf8 bytes: UnsafeBufferPointer<UInt8>) throws(YAMLError) -> [YAMLDocument] {
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return [] }
        // Heap-allocated so that its address cannot change between libyaml calls.
        let parser = UnsafeMutablePointer<yaml_parser_t>.allocate(capacity: 1)
        defer { parser.deallocate() }
        guard yaml_parser_initialize(parser) == 1 else { throw YAMLError("libyaml: out of memory", line: 0, column: 0) }
        defer { yaml_parser_delete(parser) }
        yaml_parser_set_input_string(parser, base, bytes.count)

        var composer = YAMLComposer()
        var event = yaml_event_t()
        var finished = false
        while !finished {
            guard yaml_parser_parse(parser, &event) == 1 else { throw YAMLError(failedParser: parser.pointee, input: bytes) }
            defer { yaml_event_delete(&event) }
            finished = event.type == YAML_STREAM_END_EVENT
            try composer.consume(YAMLEvent(event))
        }
        return composer.documents
    }
}

/// A YAML document that was read and where it starts.
struct YAMLDocument {
    var value: JSONValue
    var start: YAMLMark
}

/// A position in YAML text, 1-based (libyaml counts from 0).
struct YAMLMark: Sendable, Equatable {
    var line: Int
    var column: Int

    init(line: Int, column: Int) {
        self.line = line
        self.column = column
    }

    init(_ mark: yaml_mark_t) {
        line = Int(mark.line) + 1
        column = Int(mark.column) + 1
    }
}

/// YAML that could not be read: what is wrong and where (1-based line and column; 0 when the
/// problem has no place, such as libyaml running out of memory).
public struct YAMLError: Error, CustomStringConvertible, Sendable, Equatable {
    /// What is wrong, e.g. "mapping values are not allowed in this context".
    public let message: String
    /// The line of the problem, counting from 1.
    public let line: Int
    /// The column of the problem, counting from 1, in characters.
    public let column: Int

    public init(_ message: String, line: Int, column: Int) {
        self.message = message
        self.line = line
        self.column = column
    }

    init(_ message: String, at mark: YAMLMark) {
        self.init(message, line: mark.line, column: mark.column)
    }

    /// The error libyaml reports, with the construct it was reading ("while parsing a block
    /// mapping") when it gives one.
    init(failedParser parser: yaml_parser_t, input: UnsafeBufferPointer<UInt8>) {
        var message = parser.problem.map { String(cString: $0) } ?? "libyaml error \(parser.error.rawValue)"
        if parser.error == YAML_READER_ERROR {
            // Reader errors (a control character, bad UTF-8) carry a byte offset instead of a mark.
            if parser.problem_value >= 0 { message += " (#x\(String(parser.problem_value, radix: 16, uppercase: true)))" }
            let (line, column) = YAMLError.lineAndColumn(ofByte: parser.problem_offset, in: input)
            self.init(message, line: line, column: column)
            return
        }
        if let context = parser.context {
            let contextMark = YAMLMark(parser.context_mark)
            message += " (\(String(cString: context)) at line \(contextMark.line), column \(contextMark.column))"
        }
        self.init(message, at: YAMLMark(parser.problem_mark))
    }

    public var description: String { "YAML line \(line), column \(column): \(message)" }

    static func lineAndColumn(ofByte offset: Int, in input: UnsafeBufferPointer<UInt8>) -> (Int, Int) {
        let prefix = UnsafeBufferPointer(rebasing: input.prefix(min(offset, input.count)))
        let lineStart = (prefix.lastIndex(of: UInt8(ascii: "\n")).map { $0 + 1 }) ?? 0
        let columnText = String(decoding: UnsafeBufferPointer(rebasing: prefix[lineStart...]), as: UTF8.self)
        return (prefix.count(where: { $0 == UInt8(ascii: "\n") }) + 1, columnText.unicodeScalars.count + 1)
    }
}

/// One libyaml event, copied out of C memory so that the event can be deleted at once.
enum YAMLEvent {
    case documentStart(YAMLMark)
    case documentEnd
    case scalar(YAMLScalar)
    case alias(anchor: String, YAMLMark)
    case sequenceStart(anchor: String?, YAMLMark)
    case sequenceEnd
    case mappingStart(anchor: String?, YAMLMark)
    case mappingEnd
    /// Stream start and end, and libyaml's "no event".
    case none

    init(_ event: yaml_event_t) {
        let mark = YAMLMark(event.start_mark)
        switch event.type {
        case YAML_DOCUMENT_START_EVENT: self = .documentStart(mark)
        case YAML_DOCUMENT_END_EVENT: self = .documentEnd
        case YAML_ALIAS_EVENT: self = .alias(anchor: String(cString: event.data.alias.anchor), mark)
        case YAML_SCALAR_EVENT:
            let scalar = event.data.scalar
            // By length, not up to a NUL: a double-quoted "\0" puts a NUL inside the value.
            let text = String(decoding: UnsafeBufferPointer(start: scalar.value, count: scalar.length), as: UTF8.self)
            self = .scalar(YAMLScalar(
                text: text, tag: scalar.tag.map { String(cString: $0) },
                isPlain: scalar.style == YAML_PLAIN_SCALAR_STYLE,
                anchor: scalar.anchor.map { String(cString: $0) }, mark: mark))
        case YAML_SEQUENCE_START_EVENT:
            self = .sequenceStart(anchor: event.data.sequence_start.anchor.map { String(cString: $0) }, mark)
        case YAML_SEQUENCE_END_EVENT: self = .sequenceEnd
        case YAML_MAPPING_START_EVENT:
            self = .mappingStart(anchor: event.data.mapping_start.anchor.map { String(cString: $0) }, mark)
        case YAML_MAPPING_END_EVENT: self = .mappingEnd
        default: self = .none
        }
    }
}

/// A scalar as written: its text, explicit tag (libyaml expands `!!int` to
/// `tag:yaml.org,2002:int`) and whether it was plain (unquoted, not a block scalar).
struct YAMLScalar {
    var text: String
    var tag: String?
    var isPlain: Bool
    var anchor: String?
    var mark: YAMLMark
}
