import JSON

/// A chat template (the Jinja in `tokenizer_config.json` or GGUF's `tokenizer.chat_template`),
/// compiled once and rendered per request as transformers' `apply_chat_template` renders it
/// (`trim_blocks` and `lstrip_blocks` on, Python semantics), so the prompt text is the same byte
/// for byte. The Jinja subset is what real chat templates use; anything else fails to compile or
/// render with an error naming it.
public struct ChatTemplate: Sendable {
    let nodes: [TemplateNode]
    /// The template as written.
    public let source: String

    public init(_ source: String) throws(TemplateError) {
        self.source = source
        nodes = try TemplateParser.parse(source)
    }

    /// One chat message: a role, its text content, and any other fields (`tool_calls`, `name` …)
    /// as JSON.
    public struct Message: Sendable, Equatable {
        public var role: String
        public var content: String?
        public var extra: [(String, JSONValue)]

        public init(role: String, content: String?, extra: [(String, JSONValue)] = []) {
            self.role = role
            self.content = content
            self.extra = extra
        }

        public static func == (a: Message, b: Message) -> Bool {
            a.role == b.role && a.content == b.content && a.extra.count == b.extra.count
                && zip(a.extra, b.extra).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        }

        var value: TemplateValue {
            var pairs: [(String, TemplateValue)] = [("role", .string(role)), ("content", content.map { .string($0) } ?? .none)]
            for (k, v) in extra where k != "role" && k != "content" { pairs.append((k, TemplateValue(json: v))) }
            return .dict(pairs)
        }
    }

    /// The prompt text for `messages`. `variables` are the template's other globals
    /// (`bos_token`, `eos_token` …); `addGenerationPrompt` opens the assistant's turn.
    public func render(messages: [Message], addGenerationPrompt: Bool, variables: [String: String] = [:],
                       outputLimit: Int = 4 << 20) throws(TemplateError) -> String {
        var globals: [String: TemplateValue] = [:]
        for (k, v) in variables { globals[k] = .string(v) }
        globals["messages"] = .list(messages.map(\.value))
        globals["add_generation_prompt"] = .bool(addGenerationPrompt)
        var renderer = TemplateRenderer(globals: globals, outputLimit: outputLimit)
        _ = try renderer.run(nodes)
        return renderer.output
    }
}
