import Foundation
import JSON
import Testing
@testable import Text

/// The chat templates that ship with the real tokenizers render byte for byte as transformers'
/// `apply_chat_template` renders them, on every reference conversation, both with and without the
/// generation prompt.
@Suite(.enabled(if: TokenizerReferences.chatTemplatesAvailable, Comment(rawValue: TokenizerReferences.chatTemplateSkipMessage)))
struct ChatTemplateReferenceTests {
    static func templates() throws -> [JSONValue] {
        let path = try TokenizerReferences.value.chatTemplates.get()
        return try JSONValue.parse(try Data(contentsOf: URL(fileURLWithPath: path)))["templates"]!.array!
    }

    static func messages(_ json: JSONValue) -> [ChatTemplate.Message] {
        json.array!.map { m in
            let object = m.object!
            let extra = object.keys.sorted().filter { $0 != "role" && $0 != "content" }.map { ($0, object[$0]!) }
            return ChatTemplate.Message(role: object["role"]!.string!, content: object["content"]?.string, extra: extra)
        }
    }

    @Test(arguments: ["qwen2", "deepseek-v3", "smollm2"])
    func rendersAsTransformers(_ name: String) throws {
        let entry = try #require(try Self.templates().first { $0["name"]?.string == name })
        let template = try ChatTemplate(entry["template"]!.string!)
        let variables = (entry["variables"]?.object ?? [:]).compactMapValues(\.string)
        let cases = entry["cases"]!.array!
        #expect(cases.count >= 40)
        for c in cases {
            let expected = c["rendered"]!.string!
            let rendered = try template.render(messages: Self.messages(c["messages"]!),
                                               addGenerationPrompt: c["add_generation_prompt"]!.bool!, variables: variables)
            #expect(Array(rendered.utf8) == Array(expected.utf8), "\(name): \(c["messages"]!.compact)\n ours \(rendered.debugDescription)\n transformers \(expected.debugDescription)")
        }
    }
}

/// The Jinja subset, case by case against what Jinja2 prints (with trim_blocks and lstrip_blocks).
struct ChatTemplateTests {
    static func render(_ source: String, _ messages: [ChatTemplate.Message] = [], variables: [String: String] = [:]) throws -> String {
        try ChatTemplate(source).render(messages: messages, addGenerationPrompt: false, variables: variables)
    }

    @Test(arguments: [
        ("{{ 1 + 2 * 3 }}", "7"), ("{{ 'a' ~ 1 ~ none }}", "a1None"), ("{{ [1, 'x', none, true] }}", "[1, 'x', None, True]"),
        ("{{ {'k': 'v'} | tojson }}", #"{"k": "v"}"#), ("{{ 'x' if false else 'y' }}", "y"), ("{{ 'abc'[1:] }}{{ 'abc'[::-1] }}", "bccba"),
        ("{{ 'a,b,,c'.split(',') }}", "['a', 'b', '', 'c']"), ("{{ '  x  ' | trim }}|{{ ' y '.strip() }}", "x|y"),
        ("{% for x in [1, 2, 3] %}{{ loop.index }}{{ ',' if not loop.last }}{% endfor %}", "1,2,3"),
        ("{% set ns = namespace(n=0) %}{% for x in range(4) %}{% set ns.n = ns.n + x %}{% endfor %}{{ ns.n }}", "6"),
        ("{% set n = 1 %}{% for x in [1] %}{% set n = 2 %}{% endfor %}{{ n }}", "1"),  // a loop's set stays in the loop
        ("{% for x in [1, 2, 3, 4] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}", "13"),
        ("{% if a is defined %}d{% elif b is not defined %}nb{% else %}e{% endif %}", "nb"),
        ("{{ 'yes' if 'ell' in 'hello' }}{{ 'no' if 'z' not in ['a'] }}", "yesno"),
        ("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('Bo') }} {{ greet('Al', '?') }}", "Hi Bo! Hi Al?"),
        ("{{ [3, 1, 2] | length }}{{ 'héllo' | length }}{{ [1, 2] | first }}{{ [1, 2] | last }}", "3512"),
        ("{{ undefined_name }}|{{ undefined_name | default('d') }}", "|d"),
        ("  {% if true %}\n    x\n  {% endif %}\n", "    x\n"),  // lstrip_blocks and trim_blocks
        ("a  {%- if true -%}  b  {%- endif -%}  c", "abc"),
        ("{# a comment #}{{ \"q\\n\" | tojson }}", #""q\n""#),
        ("{{ {'b': 1, 'a': [1, 2.5]} | tojson(indent=2) }}", "{\n  \"b\": 1,\n  \"a\": [\n    1,\n    2.5\n  ]\n}"),
        ("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ 1 / 2 }} {{ 2 ** 3 }}", "3 -4 1 0.5 8"),
    ])
    func rendersAsJinja(_ source: String, _ expected: String) throws {
        #expect(try Self.render(source) == expected)
    }

    @Test(arguments: [
        ("{% include 'x' %}", "{% include %} is not supported"), ("{{ x | bogus }}", "the filter 'bogus'"),
        ("{% if %}", "expression is missing"), ("{% for x in y %}", "missing {% endfor %}"), ("{{ 'a' + 1 }}", "unsupported operand types for +"),
        ("{{ raise_exception('no system role') }}", "the template raised: no system role"), ("{{ x.y }}", "'x' is undefined"),
        ("{{ 'open", "unclosed '{{'"), ("{% for x in range(5000000) %}{% endfor %}", "range() of 5000000 items"),
        ("{{ x is bogus }}", "the test 'bogus'"), ("{% raw %}{% endraw %}", "raw"),
    ])
    func refusesWithTheReason(_ source: String, _ named: String) {
        #expect {
            _ = try Self.render(source)
        } throws: { error in
            "\(error)".contains(named)
        }
    }

    @Test func outputIsBounded() throws {
        let template = try ChatTemplate("{% for x in range(1000) %}{{ 'x' * 1000 }}{% endfor %}")
        #expect(throws: TemplateError.self) { _ = try template.render(messages: [], addGenerationPrompt: false, outputLimit: 100_000) }
    }
}
