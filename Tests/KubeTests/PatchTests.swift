import JSON
import Testing
@testable import KubeTestServer

/// JSON text for a test case; a typo in a test's JSON stops the test run at once.
private func parsed(_ text: String) -> JSONValue {
    do { return try JSONValue.parse(text) } catch { fatalError("test JSON does not parse: \(error)\n\(text)") }
}

/// Whether any object member anywhere in `value` is a `$` directive.
private func containsDirective(_ value: JSONValue) -> Bool {
    switch value {
    case .object(let members): members.contains { $0.key.hasPrefix("$") || containsDirective($0.value) }
    case .array(let items): items.contains(where: containsDirective)
    default: false
    }
}

/// A document, a patch and what applying it gives (nil: the patch must be refused).
struct DocumentPatchExample: Sendable, CustomTestStringConvertible {
    let name: String
    let target: String
    let patch: String
    let result: String?
    var testDescription: String { name }
}

@Suite("JSON merge patch (RFC 7386)")
struct MergePatchTests {
    /// RFC 7386 appendix A, row by row.
    static let appendixA: [DocumentPatchExample] = [
        .init(name: "replace a member", target: #"{"a":"b"}"#, patch: #"{"a":"c"}"#, result: #"{"a":"c"}"#),
        .init(name: "add a member", target: #"{"a":"b"}"#, patch: #"{"b":"c"}"#, result: #"{"a":"b","b":"c"}"#),
        .init(name: "null deletes", target: #"{"a":"b"}"#, patch: #"{"a":null}"#, result: #"{}"#),
        .init(name: "null deletes one of two", target: #"{"a":"b","b":"c"}"#, patch: #"{"a":null}"#, result: #"{"b":"c"}"#),
        .init(name: "scalar replaces array", target: #"{"a":["b"]}"#, patch: #"{"a":"c"}"#, result: #"{"a":"c"}"#),
        .init(name: "array replaces scalar", target: #"{"a":"c"}"#, patch: #"{"a":["b"]}"#, result: #"{"a":["b"]}"#),
        .init(name: "objects merge", target: #"{"a":{"b":"c"}}"#, patch: #"{"a":{"b":"d","c":null}}"#, result: #"{"a":{"b":"d"}}"#),
        .init(name: "arrays replace", target: #"{"a":[{"b":"c"}]}"#, patch: #"{"a":[1]}"#, result: #"{"a":[1]}"#),
        .init(name: "array patch on array", target: #"["a","b"]"#, patch: #"["c","d"]"#, result: #"["c","d"]"#),
        .init(name: "array patch on object", target: #"{"a":"b"}"#, patch: #"["c"]"#, result: #"["c"]"#),
        .init(name: "null patch", target: #"{"a":"foo"}"#, patch: "null", result: "null"),
        .init(name: "string patch", target: #"{"a":"foo"}"#, patch: #""bar""#, result: #""bar""#),
        .init(name: "target nulls stay", target: #"{"e":null}"#, patch: #"{"a":1}"#, result: #"{"e":null,"a":1}"#),
        .init(name: "object patch on array", target: "[1,2]", patch: #"{"a":"b","c":null}"#, result: #"{"a":"b"}"#),
        .init(name: "nested null on missing", target: "{}", patch: #"{"a":{"bb":{"ccc":null}}}"#, result: #"{"a":{"bb":{}}}"#),
    ]

    @Test("RFC 7386 appendix A", arguments: appendixA)
    func appendix(_ example: DocumentPatchExample) {
        #expect(applyMergePatch(parsed(example.target), parsed(example.patch)) == parsed(example.result!))
    }
}

@Suite("JSON patch (RFC 6902)")
struct JSONPatchTests {
    /// RFC 6902 appendix A (A.13, a document with a duplicate "op", is a parser matter and left out),
    /// then the pointer and bounds rules the appendix does not show.
    static let examples: [DocumentPatchExample] = [
        .init(name: "A.1 add an object member", target: #"{"foo":"bar"}"#,
              patch: #"[{"op":"add","path":"/baz","value":"qux"}]"#, result: #"{"baz":"qux","foo":"bar"}"#),
        .init(name: "A.2 add an array element", target: #"{"foo":["bar","baz"]}"#,
              patch: #"[{"op":"add","path":"/foo/1","value":"qux"}]"#, result: #"{"foo":["bar","qux","baz"]}"#),
        .init(name: "A.3 remove an object member", target: #"{"baz":"qux","foo":"bar"}"#,
              patch: #"[{"op":"remove","path":"/baz"}]"#, result: #"{"foo":"bar"}"#),
        .init(name: "A.4 remove an array element", target: #"{"foo":["bar","qux","baz"]}"#,
              patch: #"[{"op":"remove","path":"/foo/1"}]"#, result: #"{"foo":["bar","baz"]}"#),
        .init(name: "A.5 replace a value", target: #"{"baz":"qux","foo":"bar"}"#,
              patch: #"[{"op":"replace","path":"/baz","value":"boo"}]"#, result: #"{"baz":"boo","foo":"bar"}"#),
        .init(name: "A.6 move a value", target: #"{"foo":{"bar":"baz","waldo":"fred"},"qux":{"corge":"grault"}}"#,
              patch: #"[{"op":"move","from":"/foo/waldo","path":"/qux/thud"}]"#,
              result: #"{"foo":{"bar":"baz"},"qux":{"corge":"grault","thud":"fred"}}"#),
        .init(name: "A.7 move an array element", target: #"{"foo":["all","grass","cows","eat"]}"#,
              patch: #"[{"op":"move","from":"/foo/1","path":"/foo/3"}]"#, result: #"{"foo":["all","cows","eat","grass"]}"#),
        .init(name: "A.8 test succeeds", target: #"{"baz":"qux","foo":["a",2,"c"]}"#,
              patch: #"[{"op":"test","path":"/baz","value":"qux"},{"op":"test","path":"/foo/1","value":2}]"#,
              result: #"{"baz":"qux","foo":["a",2,"c"]}"#),
        .init(name: "A.9 test fails", target: #"{"baz":"qux"}"#,
              patch: #"[{"op":"test","path":"/baz","value":"bar"}]"#, result: nil),
        .init(name: "A.10 add a nested member object", target: #"{"foo":"bar"}"#,
              patch: #"[{"op":"add","path":"/child","value":{"grandchild":{}}}]"#, result: #"{"foo":"bar","child":{"grandchild":{}}}"#),
        .init(name: "A.11 unrecognized members are ignored", target: #"{"foo":"bar"}"#,
              patch: #"[{"op":"add","path":"/baz","value":"qux","xyz":123}]"#, result: #"{"foo":"bar","baz":"qux"}"#),
        .init(name: "A.12 add to a nonexistent target", target: #"{"foo":"bar"}"#,
              patch: #"[{"op":"add","path":"/baz/bat","value":"qux"}]"#, result: nil),
        .init(name: "A.14 ~ escape ordering", target: #"{"/":9,"~1":10}"#,
              patch: #"[{"op":"test","path":"/~01","value":10}]"#, result: #"{"/":9,"~1":10}"#),
        .init(name: "A.15 a string is not a number", target: #"{"/":9,"~1":10}"#,
              patch: #"[{"op":"test","path":"/~01","value":"10"}]"#, result: nil),
        .init(name: "A.16 add an array value", target: #"{"foo":["bar"]}"#,
              patch: #"[{"op":"add","path":"/foo/-","value":["abc","def"]}]"#, result: #"{"foo":["bar",["abc","def"]]}"#),
        .init(name: "remove a missing member", target: #"{"foo":"bar"}"#, patch: #"[{"op":"remove","path":"/baz"}]"#, result: nil),
        .init(name: "replace a missing member", target: #"{"foo":"bar"}"#, patch: #"[{"op":"replace","path":"/baz","value":1}]"#, result: nil),
        .init(name: "add past the end of an array", target: #"{"foo":[1]}"#, patch: #"[{"op":"add","path":"/foo/2","value":3}]"#, result: nil),
        .init(name: "add at the end by index", target: #"{"foo":[1]}"#, patch: #"[{"op":"add","path":"/foo/1","value":2}]"#, result: #"{"foo":[1,2]}"#),
        .init(name: "remove at - is out of bounds", target: #"{"foo":[1]}"#, patch: #"[{"op":"remove","path":"/foo/-"}]"#, result: nil),
        .init(name: "a leading zero is not an index", target: #"{"foo":[1,2]}"#, patch: #"[{"op":"remove","path":"/foo/01"}]"#, result: nil),
        .init(name: "~1 in a member name", target: #"{"a/b":1}"#, patch: #"[{"op":"replace","path":"/a~1b","value":2}]"#, result: #"{"a/b":2}"#),
        .init(name: "copy", target: #"{"a":{"b":[1]}}"#, patch: #"[{"op":"copy","from":"/a/b","path":"/c"}]"#, result: #"{"a":{"b":[1]},"c":[1]}"#),
        .init(name: "replace the whole document", target: #"{"a":1}"#, patch: #"[{"op":"replace","path":"","value":[1]}]"#, result: "[1]"),
        .init(name: "test compares numbers by value", target: #"{"a":1}"#, patch: #"[{"op":"test","path":"/a","value":1.0}]"#, result: #"{"a":1}"#),
        .init(name: "move into its own child", target: #"{"a":{"b":1}}"#, patch: #"[{"op":"move","from":"/a","path":"/a/b/c"}]"#, result: nil),
        .init(name: "unknown op", target: "{}", patch: #"[{"op":"frobnicate","path":"/a"}]"#, result: nil),
        .init(name: "add without a value", target: "{}", patch: #"[{"op":"add","path":"/a"}]"#, result: nil),
        .init(name: "a patch that is not an array", target: "{}", patch: #"{"op":"add","path":"/a","value":1}"#, result: nil),
    ]

    @Test("RFC 6902 appendix A and the pointer rules", arguments: examples)
    func example(_ example: DocumentPatchExample) {
        let outcome = Result { () throws(PatchError) in try applyJSONPatch(parsed(example.target), parsed(example.patch)) }
        switch (outcome, example.result) {
        case (.success(let result), let expected?): #expect(result == parsed(expected))
        case (.failure, nil): break
        case (.success(let result), nil): Issue.record("applied, giving \(result.compact), but should have been refused")
        case (.failure(let error), _?): Issue.record("refused: \(error)")
        }
    }

    @Test("An error names the operation (counting from 1) and the path; a failed patch changes nothing")
    func errorsNameTheOperation() {
        let target = parsed(#"{"spec":{"replicas":1}}"#)
        let patch = parsed(#"[{"op":"replace","path":"/spec/replicas","value":5},{"op":"remove","path":"/spec/x"}]"#)
        let missing = #expect(throws: PatchError.self) { try applyJSONPatch(target, patch) }
        #expect(missing?.description == "JSON patch operation 2: path /spec/x does not exist")
        let failedTest = #expect(throws: PatchError.self) {
            try applyJSONPatch(target, parsed(#"[{"op":"test","path":"/spec/replicas","value":2}]"#))
        }
        #expect(failedTest?.description == "JSON patch operation 1: test failed: value at /spec/replicas is 1, not 2")
        let noParent = #expect(throws: PatchError.self) {
            try applyJSONPatch(target, parsed(#"[{"op":"add","path":"/spec/a/b","value":2}]"#))
        }
        #expect(noParent?.description == "JSON patch operation 1: path /spec/a/b does not exist (no /spec/a)")
        #expect(target == parsed(#"{"spec":{"replicas":1}}"#))
    }
}

@Suite("Strategic merge patch")
struct StrategicMergePatchTests {
    static let deployment = parsed("""
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}, "finalizers": ["x", "y"]},
         "spec": {"replicas": 2,
                  "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                  "template": {"metadata": {"labels": {"app": "web"}},
                               "spec": {"containers": [
                                 {"name": "web", "image": "nginx:1.25", "args": ["--a", "--b"],
                                  "env": [{"name": "A", "value": "1"}], "ports": [{"containerPort": 80}]},
                                 {"name": "sidecar", "image": "envoy:1"}]}}}}
        """)
    static let schema = StrategicMergeSchema.forKind("Deployment")!

    /// A patch to `deployment`, the path of the part to look at, and what that part must be after.
    struct Example: Sendable, CustomTestStringConvertible {
        let name: String
        let patch: String
        let path: [String]
        let expected: String
        var testDescription: String { name }
    }

    static let containers = ["spec", "template", "spec", "containers"]
    static let examples: [Example] = [
        .init(name: "a container's image changes by name, the rest of it and the other container stay",
              patch: #"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"nginx:1.26"}]}}}}"#, path: containers,
              expected: """
                [{"name": "web", "image": "nginx:1.26", "args": ["--a", "--b"], "env": [{"name": "A", "value": "1"}], "ports": [{"containerPort": 80}]},
                 {"name": "sidecar", "image": "envoy:1"}]
                """),
        .init(name: "an env var is added to a container (patch elements first, as apimachinery orders them)",
              patch: #"{"spec":{"template":{"spec":{"containers":[{"name":"web","env":[{"name":"B","value":"2"}]}]}}}}"#,
              path: containers + ["0", "env"], expected: #"[{"name":"B","value":"2"},{"name":"A","value":"1"}]"#),
        .init(name: "$setElementOrder puts the added env var where kubectl says",
              patch: #"{"spec":{"template":{"spec":{"containers":[{"name":"web","$setElementOrder/env":[{"name":"A"},{"name":"B"}],"env":[{"name":"B","value":"2"}]}]}}}}"#,
              path: containers + ["0", "env"], expected: #"[{"name":"A","value":"1"},{"name":"B","value":"2"}]"#),
        .init(name: "$patch delete removes a container",
              patch: #"{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","$patch":"delete"}]}}}}"#, path: containers,
              expected: #"[{"name":"web","image":"nginx:1.25","args":["--a","--b"],"env":[{"name":"A","value":"1"}],"ports":[{"containerPort":80}]}]"#),
        .init(name: "$setElementOrder reorders containers and places a new one between them",
              patch: #"{"spec":{"template":{"spec":{"$setElementOrder/containers":[{"name":"sidecar"},{"name":"new"},{"name":"web"}],"containers":[{"name":"new","image":"busybox"}]}}}}"#,
              path: containers + ["1"], expected: #"{"name":"new","image":"busybox"}"#),
        .init(name: "a {$patch: replace} element replaces the whole list",
              patch: #"{"spec":{"template":{"spec":{"containers":[{"name":"only","image":"busybox"},{"$patch":"replace"}]}}}}"#,
              path: containers, expected: #"[{"name":"only","image":"busybox"}]"#),
        .init(name: "an atomic list (args) is replaced",
              patch: #"{"spec":{"template":{"spec":{"containers":[{"name":"web","args":["--c"]}]}}}}"#,
              path: containers + ["0", "args"], expected: #"["--c"]"#),
        .init(name: "$retainKeys drops the members it does not list",
              patch: #"{"spec":{"strategy":{"$retainKeys":["type"],"type":"Recreate","rollingUpdate":null}}}"#,
              path: ["spec", "strategy"], expected: #"{"type":"Recreate"}"#),
        .init(name: "$patch replace in an object replaces the object",
              patch: #"{"spec":{"strategy":{"$patch":"replace","type":"Recreate"}}}"#,
              path: ["spec", "strategy"], expected: #"{"type":"Recreate"}"#),
        .init(name: "null deletes a member",
              patch: #"{"metadata":{"labels":{"tier":null}}}"#, path: ["metadata", "labels"], expected: #"{"app":"web"}"#),
        .init(name: "finalizers merge as a set, without duplicates",
              patch: #"{"metadata":{"finalizers":["x","y","z"]}}"#, path: ["metadata", "finalizers"], expected: #"["x","y","z"]"#),
        .init(name: "a new finalizer goes before the ones only the server had (apimachinery's order)",
              patch: #"{"metadata":{"finalizers":["z"]}}"#, path: ["metadata", "finalizers"], expected: #"["z","x","y"]"#),
        .init(name: "$deleteFromPrimitiveList removes finalizers",
              patch: #"{"metadata":{"$deleteFromPrimitiveList/finalizers":["x"]}}"#, path: ["metadata", "finalizers"], expected: #"["y"]"#),
        .init(name: "kubectl's finalizer edit: order, additions and deletions together",
              patch: #"{"metadata":{"$setElementOrder/finalizers":["y","z"],"finalizers":["z"],"$deleteFromPrimitiveList/finalizers":["x"]}}"#,
              path: ["metadata", "finalizers"], expected: #"["y","z"]"#),
        .init(name: "directives inside a new element are resolved, not stored",
              patch: #"{"spec":{"template":{"spec":{"containers":[{"name":"new","env":[{"name":"C","value":"3"},{"name":"D","$patch":"delete"}],"args":null}]}}}}"#,
              path: containers + ["0"], expected: #"{"name":"new","env":[{"name":"C","value":"3"}]}"#),
    ]

    @Test("Strategic merge patches on a Deployment", arguments: examples)
    func example(_ example: Example) throws {
        let result = try applyStrategicMergePatch(Self.deployment, parsed(example.patch), schema: Self.schema)
        var actual: JSONValue? = result
        for step in example.path {
            if let index = Int(step) { actual = actual?.array.flatMap { index < $0.count ? $0[index] : nil } } else { actual = actual?[step] }
        }
        #expect(actual == parsed(example.expected))
        #expect(!containsDirective(result), "a directive leaked into \(result.compact)")
    }

    @Test("Fields the patch does not touch stay as they were")
    func untouchedFieldsStay() throws {
        let result = try applyStrategicMergePatch(Self.deployment, parsed(#"{"spec":{"replicas":5}}"#), schema: Self.schema)
        var expected = Self.deployment
        expected[path: ["spec", "replicas"]] = 5
        #expect(result == expected)
    }

    @Test("Patches that cannot apply are refused with the field named", arguments: [
        (#"{"spec":{"template":{"spec":{"containers":[{"image":"x"}]}}}}"#, #".spec.template.spec.containers: element {"image":"x"} has no merge key "name""#),
        (#"{"spec":{"strategy":{"$patch":"explode"}}}"#, #".spec.strategy: unknown $patch directive "explode""#),
        (#"{"spec":{"strategy":{"$retainKeys":["type"],"rollingUpdate":{"maxSurge":2}}}}"#, ".spec.strategy: rollingUpdate is set by the patch but not listed in $retainKeys"),
        (#"{"spec":{"$frobnicate":1}}"#, ".spec: unknown directive $frobnicate"),
        (#"["not","an","object"]"#, "a strategic merge patch must be a JSON object, not an array"),
    ])
    func refused(patch: String, message: String) {
        let error = #expect(throws: PatchError.self) {
            try applyStrategicMergePatch(Self.deployment, parsed(patch), schema: Self.schema)
        }
        #expect(error?.description == message)
    }

    @Test("Built-in kinds have a schema; custom resources do not")
    func schemas() {
        for kind in ["Pod", "Deployment", "Service", "ConfigMap", "Secret", "Event", "Lease", "EndpointSlice", "Namespace"] {
            #expect(StrategicMergeSchema.forKind(kind) != nil, "\(kind)")
        }
        #expect(StrategicMergeSchema.forKind("ExpertPool") == nil)
        let pod = StrategicMergeSchema.forKind("Pod")!
        #expect(pod.field("spec").listMerge(for: "containers") == .byKey("name"))
        #expect(pod.field("spec").field("containers").listMerge(for: "volumeMounts") == .byKey("mountPath"))
        #expect(pod.field("spec").listMerge(for: "tolerations") == nil)
        #expect(StrategicMergeSchema.forKind("Service")!.field("spec").listMerge(for: "ports") == .byKey("port"))
        #expect(StrategicMergeSchema.forKind("EndpointSlice")!.listMerge(for: "endpoints") == nil)
    }
}
