import JSON
import Testing
@testable import Kube

/// The YAML reader against hand-written documents whose values are worked out from YAML 1.1 and
/// go-yaml v2 (what kubectl reads with), and the writer by reading its output back.
@Suite("YAML")
struct YAMLTests {
    /// The error `YAML.parse` throws for `text`, or nil when it reads.
    static func parseError(_ text: String) -> YAMLError? {
        do {
            _ = try YAML.parse(text)
            return nil
        } catch {
            return error
        }
    }

    @Test("A kubeconfig reads into nested objects and lists")
    func kubeconfig() throws {
        let text = """
            apiVersion: v1
            kind: Config
            clusters:
            - cluster:
                certificate-authority-data: LS0tLS1CRUdJTg==
                server: https://127.0.0.1:6443
              name: kind-kind
            contexts:
            - context:
                cluster: kind-kind
                user: kind-kind
                namespace: default
              name: kind-kind
            current-context: kind-kind
            preferences: {}
            users:
            - name: kind-kind
              user:
                token: "abc.def"   # quoted, a comment after it
                exec:
                  args: [--region, eu-west-1]
                  env: null
            """
        let config = try YAML.parse(text)
        #expect(config["kind"] == "Config")
        #expect(config["current-context"] == "kind-kind")
        #expect(config["preferences"] == .object([:]))
        #expect(config["clusters"]?.array?.count == 1)
        #expect(config["clusters"]?.array?.first?[path: ["cluster", "server"]] == "https://127.0.0.1:6443")
        #expect(config["clusters"]?.array?.first?[path: ["cluster", "certificate-authority-data"]] == "LS0tLS1CRUdJTg==")
        #expect(config["contexts"]?.array?.first == [
            "context": ["cluster": "kind-kind", "user": "kind-kind", "namespace": "default"], "name": "kind-kind",
        ])
        let user = config["users"]?.array?.first?["user"]
        #expect(user?["token"] == "abc.def")
        #expect(user?[path: ["exec", "args"]] == ["--region", "eu-west-1"])
        #expect(user?[path: ["exec", "env"]] == .null)
    }

    @Test("A manifest stream gives its documents in order, without the empty ones")
    func multiDocumentManifest() throws {
        let text = """
            # leading comment
            ---
            apiVersion: v1
            kind: Namespace
            metadata: {name: eaas}
            ---
            ---
            apiVersion: apps/v1
            kind: Deployment
            metadata:
              name: pod
              namespace: eaas
            spec:
              replicas: 2
            ---

            """
        let documents = try YAML.parseDocuments(text)
        #expect(documents.count == 2)
        #expect(documents.first == ["apiVersion": "v1", "kind": "Namespace", "metadata": ["name": "eaas"]])
        #expect(documents.last?[path: ["spec", "replicas"]] == 2)
        #expect(documents.last?[path: ["metadata", "namespace"]] == "eaas")

        #expect(try YAML.parseDocuments("") == [])
        #expect(try YAML.parseDocuments("# only a comment\n---\n...\n") == [])
        #expect(try YAML.parse("") == .null)
        #expect(try YAML.parse("---\nkind: Pod\n---\n") == ["kind": "Pod"])
        let error = Self.parseError(text)
        #expect(error?.message == "expected one YAML document, found 2")
        #expect(error?.line == 7)
    }

    /// YAML 1.1 types of plain scalars, as go-yaml v2 resolves them, and quoting that keeps text.
    static let resolutionTable: [(String, JSONValue)] = [
        ("on", true), ("On", true), ("ON", true), ("off", false), ("yes", true), ("Yes", true), ("YES", true),
        ("no", false), ("NO", false), ("y", true), ("Y", true), ("n", false), ("N", false),
        ("true", true), ("True", true), ("TRUE", true), ("false", false), ("tRUE", "tRUE"), ("yEs", "yEs"),
        ("~", .null), ("null", .null), ("Null", .null), ("NULL", .null), ("", .null), ("nULL", "nULL"),
        ("0", 0), ("-0", 0), ("42", 42), ("+42", 42), ("-17", -17), ("1_000", 1000), ("0x1F", 31), ("0X1f", 31),
        ("-0x10", -16), ("017", 15), ("0o17", 15), ("0b101", 5), ("-0b101", -5),
        ("9223372036854775807", .int(Int.max)), ("-9223372036854775808", .int(Int.min)),
        ("9223372036854775808", 9223372036854775808.0), ("08", 8.0), ("0x", "0x"),
        ("1e3", 1000.0), ("1E3", 1000.0), ("1.5", 1.5), ("-1.5e-3", -0.0015), ("1.", 1.0), (".5", 0.5), ("+.5", 0.5),
        ("1_000.5", 1000.5), (".inf", .double(.infinity)), (".Inf", .double(.infinity)), ("+.INF", .double(.infinity)),
        ("-.inf", .double(-.infinity)), ("1e400", "1e400"), (".", "."), ("1.2.3", "1.2.3"),
        ("12:30", "12:30"), ("2001-12-14", "2001-12-14"), ("10Gi", "10Gi"), ("0.5Gi", "0.5Gi"), ("abc", "abc"),
        ("\"on\"", "on"), ("'123'", "123"), ("\"\"", ""), ("'~'", "~"), ("\"0x1F\"", "0x1F"),
        ("!!str 123", "123"), ("!!str yes", "yes"), ("!!int '12'", 12), ("!!int 0x10", 16), ("!!float 1", 1.0),
        ("!!float '2.5'", 2.5), ("!!bool \"on\"", true), ("!!null ''", .null), ("! 12", "12"),
        ("!!timestamp 2001-12-14", "2001-12-14"), ("!local 12", "12"),
    ]

    @Test("Plain scalars resolve to YAML 1.1 types; quoted and tagged ones as they say", arguments: resolutionTable)
    func resolution(scalar: String, expected: JSONValue) throws {
        #expect(try YAML.parse("value: \(scalar)\n") == ["value": expected])
    }

    @Test("NaN resolves from .nan, .NaN and .NAN")
    func notANumber() throws {
        for text in [".nan", ".NaN", ".NAN"] {
            #expect(try YAML.parse(text).double?.isNaN == true)
        }
        #expect(try YAML.parse(".Nan") == ".Nan")
    }

    @Test("Block scalars keep or fold lines and chomp as their indicators say")
    func blockScalars() throws {
        let text = """
            number: |
              123
            literal: |
              line one
                indented
              line three

            folded: >
              folded
              together

              new paragraph
            strip: |-
              no final newline

            keep: |+
              all final newlines

            clip: >-
              yes
            """
        let value = try YAML.parse(text)
        #expect(value["literal"] == "line one\n  indented\nline three\n")
        #expect(value["folded"] == "folded together\nnew paragraph\n")
        #expect(value["strip"] == "no final newline")
        #expect(value["keep"] == "all final newlines\n\n")
        #expect(value["clip"] == "yes")
        #expect(value["number"] == "123\n")
    }

    @Test("Anchors and aliases copy values; merge keys fill in keys the mapping lacks")
    func anchorsAliasesAndMergeKeys() throws {
        let text = """
            defaults: &defaults
              image: eaas:1
              pullPolicy: IfNotPresent
              limits: &limits {cpu: 2, memory: 4Gi}
            extra: &extra
              pullPolicy: Always
              port: 8080
            single:
              <<: *defaults
              image: eaas:2
            list:
              pullPolicy: Never
              <<: [*extra, *defaults]
            copies: [*limits, *limits]
            name: &name pod-a
            label: *name
            """
        let value = try YAML.parse(text)
        #expect(value["single"] == [
            "image": "eaas:2", "pullPolicy": "IfNotPresent", "limits": ["cpu": 2, "memory": "4Gi"],
        ])
        // The explicit key wins even though it comes before the merge; among the merged
        // mappings the first listed wins (`port` and `image` come from one each).
        #expect(value["list"] == [
            "pullPolicy": "Never", "port": 8080, "image": "eaas:1", "limits": ["cpu": 2, "memory": "4Gi"],
        ])
        #expect(value["copies"] == [["cpu": 2, "memory": "4Gi"], ["cpu": 2, "memory": "4Gi"]])
        #expect(value["label"] == "pod-a")
        #expect(try YAML.parse("quoted: {\"<<\": 1}\n") == ["quoted": ["<<": 1]])
        #expect(Self.parseError("a: {<<: 1}\n")?.message == "the value of a merge key (<<) must be a mapping or a list of mappings")
    }

    @Test("Bad indentation is reported at its line and column")
    func badIndentation() {
        let error = Self.parseError("metadata:\n  name: a\n    labels: b\n")
        #expect(error?.message == "mapping values are not allowed in this context")
        #expect(error?.line == 3)
        #expect(error?.column == 11)
        #expect(error?.description == "YAML line 3, column 11: mapping values are not allowed in this context")

        let outdented = Self.parseError("spec:\n    replicas: 1\n  paused: true\n")
        #expect(outdented?.line == 3)
        #expect(outdented?.message.hasPrefix("did not find expected key") == true)
    }

    @Test("Duplicate keys, non-scalar keys and unknown aliases are errors that name them")
    func structuralErrors() {
        let duplicate = Self.parseError("metadata:\n  name: a\n  name: b\n")
        #expect(duplicate?.message == "duplicate key \"name\"")
        #expect(duplicate?.line == 3)
        #expect(duplicate?.column == 3)

        let sequenceKey = Self.parseError("? [a, b]\n: value\n")
        #expect(sequenceKey?.message == "mapping keys must be scalars, not a sequence or mapping")
        #expect(Self.parseError("{a: 1}: value\n")?.message == "mapping keys must be scalars, not a sequence or mapping")

        let unknown = Self.parseError("a: 1\nb: *missing\n")
        #expect(unknown?.message == "alias *missing refers to an unknown anchor")
        #expect(unknown?.line == 2)
        // Anchors do not reach into the next document.
        #expect((try? YAML.parseDocuments("a: &x 1\n---\nb: *x\n")) == nil)
        #expect(Self.parseError("a: &x [1, *x]\n")?.message == "alias *x refers to a node that contains it")

        let badInteger = Self.parseError("replicas: !!int two\n")
        #expect(badInteger?.message == "cannot read \"two\" as !!int")
        #expect(badInteger?.column == 11)
        #expect(Self.parseError("a: !!bool maybe\n")?.message == "cannot read \"maybe\" as !!bool")
        #expect(Self.parseError("a: \"tab\u{7}\"\n")?.message == "control characters are not allowed (#x7)")
    }

    @Test("Hostile input: deep nesting and alias bombs are refused")
    func limits() {
        let deep = Self.parseError(String(repeating: "[", count: 10_000))
        #expect(deep?.message == "nested deeper than 512 levels")
        #expect(deep?.column == 513)

        var bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        for (name, previous) in zip("bcdefgh", "abcdefg") {
            bomb += "\(name): &\(name) [" + Array(repeating: "*\(previous)", count: 10).joined(separator: ", ") + "]\n"
        }
        #expect(Self.parseError(bomb)?.message == "aliases expand to more than 1000000 nodes")
    }

    /// Values whose YAML must quote, escape or nest to read back the same.
    static let roundTripTable: [JSONValue] = [
        "plain", "yes", "no", "on", "y", "N", "~", "null", "123", "0x1F", "017", "1e3", ".inf", "1_000", "",
        " padded ", "a: b", "- x", "? q", "# not a comment", "a #b", "key:", "&anchor", "*alias", "!tag", "|", ">",
        "'single'", "\"double\"", "[1, 2]", "{a: 1}", "<<", "=", "...", "---", "1:20", "-1:20", "2001-12-14", "-", "--flag", "-x: y",
        "multi\nline\ntext\n", "tab\tand\r\n", "back\\slash", "bell\u{7}", "nul\u{0}", "del\u{7F}", "nel\u{85}",
        "sep\u{2028}", "bom\u{FEFF}", "ünïcødé", "emoji 😀", "http://host:8080/path#frag", "10Gi",
        .null, true, false, 0, -1, .int(Int.max), .int(Int.min), 1.0, -0.5, 1e-5, 1e300, 123456.789,
        .double(.infinity), .double(-.infinity),
        [:], [], [[:], []], [[]], ["a", 1, .null, true],
        ["yes": "no", "123": 123, "": "", "a: b": ["- x": []], "<<": ["k": "v"]],
        ["containers": [["name": "pod", "ports": [["containerPort": 8080]], "args": ["--flag", "on"]]]],
        [[1, [2, [3]]], ["nested": [["deep": [:]]]]],
        .object([String(repeating: "k", count: 1500): ["long key": true]]),
    ]

    @Test("Written YAML reads back as the same value", arguments: roundTripTable)
    func writerRoundTrip(value: JSONValue) throws {
        #expect(try YAML.parse(value.yaml) == value, "YAML was:\n\(value.yaml)")
    }

    @Test("The writer uses kubectl's block layout, sorted keys and quotes only where needed")
    func writerLayout() {
        let pod: JSONValue = [
            "kind": "Pod",
            "metadata": ["name": "pod-a", "labels": [:]],
            "spec": ["containers": [["name": "main", "args": ["--on", "yes"], "env": []]]],
            "data": ["script": "echo hi\n", "replicas": "3", "ratio": 0.5, "limit": 1e-5],
        ]
        #expect(pod.yaml == """
            data:
              limit: 1.0e-05
              ratio: 0.5
              replicas: "3"
              script: "echo hi\\n"
            kind: Pod
            metadata:
              labels: {}
              name: pod-a
            spec:
              containers:
              - args:
                - --on
                - "yes"
                env: []
                name: main

            """)
        #expect(JSONValue.string("on").yaml == "\"on\"\n")
        #expect(JSONValue.array([]).yaml == "[]\n")
        #expect(JSONValue.null.yaml == "null\n")
    }
}
