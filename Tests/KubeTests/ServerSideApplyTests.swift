import JSON
import Testing
@testable import KubeTestServer

/// Server-side apply and field ownership: what an apply sets, removes and records in
/// `metadata.managedFields`, and when it conflicts with another manager.
@Suite("Server-side apply")
struct ServerSideApplyTests {
    static let schema = StrategicMergeSchema.forKind("Deployment")!
    static let now = "2025-01-01T00:00:00Z"

    static func parsed(_ text: String) -> JSONValue {
        do { return try JSONValue.parse(text) } catch { fatalError("test JSON does not parse: \(error)\n\(text)") }
    }

    /// A Deployment configuration as a manager would apply it.
    static func config(replicas: Int = 2, labels: String = #"{"app":"web","tier":"front"}"#, image: String = "nginx:1.25") -> JSONValue {
        parsed("""
            {"apiVersion": "apps/v1", "kind": "Deployment",
             "metadata": {"name": "web", "namespace": "default", "labels": \(labels)},
             "spec": {"replicas": \(replicas),
                      "template": {"spec": {"containers": [{"name": "web", "image": "\(image)"}]}}}}
            """)
    }

    static func apply(_ applied: JSONValue, to existing: JSONValue?, as manager: String, force: Bool = false) throws(ApplyConflict) -> JSONValue {
        try serverSideApply(existing: existing, applied: applied, manager: manager, force: force,
                            apiVersion: "apps/v1", now: now, schema: schema)
    }

    /// The `fieldsV1` trie of `manager`'s entry with `operation`, nil when it has none.
    static func ownership(_ object: JSONValue, _ manager: String, _ operation: String = "Apply") -> JSONValue? {
        object[path: ["metadata", "managedFields"]]?.array?
            .first { $0["manager"]?.string == manager && $0["operation"]?.string == operation }?["fieldsV1"]
    }

    /// The conflicts an apply that must fail reports, as `manager field` strings.
    static func conflicts(applying applied: JSONValue, to existing: JSONValue, as manager: String) -> [String] {
        do {
            _ = try apply(applied, to: existing, as: manager)
            Issue.record("the apply succeeded but should have conflicted")
            return []
        } catch {
            return error.conflicts.map { "\($0.manager) \($0.field)" }
        }
    }

    @Test("An apply creates the object and records the applied fields, name-keyed containers and all")
    func applyCreates() throws {
        let object = try Self.apply(Self.config(), to: nil, as: "kubectl")
        #expect(object[path: ["spec", "replicas"]] == 2)
        #expect(object[path: ["metadata", "labels"]] == ["app": "web", "tier": "front"])
        let entry = object[path: ["metadata", "managedFields"]]?.array?.first
        #expect(object[path: ["metadata", "managedFields"]]?.array?.count == 1)
        #expect(entry?["manager"] == "kubectl")
        #expect(entry?["operation"] == "Apply")
        #expect(entry?["apiVersion"] == "apps/v1")
        #expect(entry?["time"] == .string(Self.now))
        #expect(entry?["fieldsType"] == "FieldsV1")
        #expect(entry?["fieldsV1"] == Self.parsed("""
            {"f:metadata": {"f:labels": {"f:app": {}, "f:tier": {}}},
             "f:spec": {"f:replicas": {},
                        "f:template": {"f:spec": {"f:containers": {"k:{\\"name\\":\\"web\\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}}
            """))
    }

    @Test("Re-applying without a label removes it; the rest stays")
    func reapplyRemovesDroppedFields() throws {
        let first = try Self.apply(Self.config(), to: nil, as: "kubectl")
        let second = try Self.apply(Self.config(labels: #"{"app":"web"}"#), to: first, as: "kubectl")
        #expect(second[path: ["metadata", "labels"]] == ["app": "web"])
        #expect(second[path: ["spec", "replicas"]] == 2)
        #expect(Self.ownership(second, "kubectl")?[path: ["f:metadata", "f:labels"]] == ["f:app": [:]])
    }

    @Test("A field another manager also applied survives when one of them stops applying it")
    func sharedFieldsSurvive() throws {
        let first = try Self.apply(Self.config(), to: nil, as: "kubectl")
        let shared = try Self.apply(Self.parsed(#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","labels":{"tier":"front"}}}"#),
                                    to: first, as: "helm")
        let dropped = try Self.apply(Self.config(labels: #"{"app":"web"}"#), to: shared, as: "kubectl")
        #expect(dropped[path: ["metadata", "labels"]] == ["app": "web", "tier": "front"])
    }

    @Test("A container dropped from the config stays, keyed, while another manager owns a field in it")
    func droppedElementWithOtherOwnerStays() throws {
        var config = Self.config()
        config[path: ["spec", "template", "spec", "containers"]] = [["name": "web", "image": "nginx:1.25"], ["name": "sidecar", "image": "envoy:1"]]
        let applied = try Self.apply(config, to: nil, as: "kubectl")
        var tuned = applied
        tuned[path: ["spec", "template", "spec", "containers"]] = [
            ["name": "web", "image": "nginx:1.25"], ["name": "sidecar", "image": "envoy:1", "resources": ["limits": ["cpu": "1"]]],
        ]
        let updated = recordUpdate(old: applied, new: tuned, manager: "tuner", apiVersion: "apps/v1", now: Self.now, schema: Self.schema)
        let reapplied = try Self.apply(Self.config(), to: updated, as: "kubectl")
        #expect(reapplied[path: ["spec", "template", "spec", "containers"]] == [
            ["name": "web", "image": "nginx:1.25"], ["name": "sidecar", "resources": ["limits": ["cpu": "1"]]],
        ])
        // Without the other owner the element goes entirely.
        let alone = try Self.apply(Self.config(), to: applied, as: "kubectl")
        #expect(alone[path: ["spec", "template", "spec", "containers"]] == [["name": "web", "image": "nginx:1.25"]])
    }

    @Test("Another manager's apply that changes an owned field conflicts, naming field and owner")
    func conflictingApply() throws {
        let object = try Self.apply(Self.config(), to: nil, as: "kubectl")
        let scaler = Self.parsed(#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},"spec":{"replicas":3}}"#)
        #expect(Self.conflicts(applying: scaler, to: object, as: "scaler") == ["kubectl .spec.replicas"])
        do {
            _ = try Self.apply(scaler, to: object, as: "scaler")
        } catch {
            #expect(error.description == #"Apply failed with 1 conflict: conflict with "kubectl": .spec.replicas"#)
        }

        // The same value is no conflict: both managers own the field.
        let agreeing = try Self.apply(Self.parsed(#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},"spec":{"replicas":2}}"#),
                                      to: object, as: "scaler")
        #expect(Self.ownership(agreeing, "scaler") == ["f:spec": ["f:replicas": [:]]])
        #expect(Self.ownership(agreeing, "kubectl")?[path: ["f:spec", "f:replicas"]] == [:])
    }

    @Test("A forced apply takes the field; the old owner's next apply then conflicts")
    func forceTakesOwnership() throws {
        let object = try Self.apply(Self.config(), to: nil, as: "kubectl")
        let scaler = Self.parsed(#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},"spec":{"replicas":3}}"#)
        let forced = try Self.apply(scaler, to: object, as: "scaler", force: true)
        #expect(forced[path: ["spec", "replicas"]] == 3)
        #expect(Self.ownership(forced, "scaler") == ["f:spec": ["f:replicas": [:]]])
        #expect(Self.ownership(forced, "kubectl")?[path: ["f:spec", "f:replicas"]] == nil)
        #expect(Self.ownership(forced, "kubectl")?[path: ["f:spec", "f:template"]] != nil)
        #expect(Self.conflicts(applying: Self.config(), to: forced, as: "kubectl") == ["scaler .spec.replicas"])
    }

    @Test("An update by another manager takes the fields it changed; applying them back conflicts")
    func updateThenConflictingApply() throws {
        let applied = try Self.apply(Self.config(), to: nil, as: "kubectl")
        var edited = applied
        edited[path: ["spec", "template", "spec", "containers"]] = [["name": "web", "image": "nginx:1.26"]]
        edited[path: ["metadata", "annotations"]] = ["note": "hand-edited"]
        let updated = recordUpdate(old: applied, new: edited, manager: "kubectl-edit", apiVersion: "apps/v1",
                                   now: Self.now, schema: Self.schema)
        #expect(updated[path: ["spec", "template", "spec", "containers"]]?.array?.first?["image"] == "nginx:1.26")
        #expect(Self.ownership(updated, "kubectl-edit", "Update") == Self.parsed("""
            {"f:metadata": {"f:annotations": {"f:note": {}}},
             "f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\\"name\\":\\"web\\"}": {"f:image": {}}}}}}}
            """))
        let kubectlContainer = Self.ownership(updated, "kubectl")?[path: ["f:spec", "f:template", "f:spec", "f:containers", #"k:{"name":"web"}"#]]
        #expect(kubectlContainer == [".": [:], "f:name": [:]])

        #expect(Self.conflicts(applying: Self.config(image: "nginx:1.27"), to: updated, as: "kubectl")
                == [#"kubectl-edit .spec.template.spec.containers[name="web"].image"#])
        // Applying the value the editor set is agreement, not a conflict.
        let agreed = try Self.apply(Self.config(image: "nginx:1.26"), to: updated, as: "kubectl")
        #expect(agreed[path: ["spec", "template", "spec", "containers"]]?.array?.first?["image"] == "nginx:1.26")
    }

    @Test("Creating with a manager owns every field but identity and server metadata; managers left with nothing are dropped")
    func createOwnsEverything() {
        let created = recordUpdate(old: nil, new: Self.parsed("""
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "c", "namespace": "default", "uid": "u1", "resourceVersion": "5", "labels": {"a": "b"}},
             "data": {"k": "v"}}
            """), manager: "creator", apiVersion: "v1", now: Self.now, schema: StrategicMergeSchema.forKind("ConfigMap"))
        #expect(Self.ownership(created, "creator", "Update") == ["f:metadata": ["f:labels": ["f:a": [:]]], "f:data": ["f:k": [:]]])

        var replaced = created
        replaced["data"] = ["k": "w"]
        replaced[path: ["metadata", "labels"]] = ["a": "c"]
        let taken = recordUpdate(old: created, new: replaced, manager: "other", apiVersion: "v1", now: Self.now, schema: nil)
        #expect(Self.ownership(taken, "creator", "Update") == nil)
        #expect(taken[path: ["metadata", "managedFields"]]?.array?.count == 1)
    }

    @Test("For a custom resource, lists of named objects merge by name and keep other managers' elements")
    func customResourceListsMergeByName() throws {
        func pool(_ shards: String) -> JSONValue {
            Self.parsed(#"{"apiVersion":"eaas.dev/v1","kind":"ExpertPool","metadata":{"name":"p"},"spec":{"shards":\#(shards)}}"#)
        }
        func apply(_ config: JSONValue, to existing: JSONValue?, as manager: String) throws(ApplyConflict) -> JSONValue {
            try serverSideApply(existing: existing, applied: config, manager: manager, force: false,
                                apiVersion: "eaas.dev/v1", now: Self.now, schema: nil)
        }
        let first = try apply(pool(#"[{"name":"a","replicas":1}]"#), to: nil, as: "alice")
        let second = try apply(pool(#"[{"name":"b","replicas":2}]"#), to: first, as: "bob")
        #expect(second[path: ["spec", "shards"]] == Self.parsed(#"[{"name":"a","replicas":1},{"name":"b","replicas":2}]"#))
        let again = try apply(pool(#"[{"name":"a","replicas":1}]"#), to: second, as: "alice")
        #expect(again[path: ["spec", "shards"]]?.array?.count == 2)
        let dropped = try apply(pool("[]"), to: again, as: "alice")
        #expect(dropped[path: ["spec", "shards"]] == Self.parsed(#"[{"name":"b","replicas":2}]"#))
    }

    @Test("Finalizers are owned value by value; server-managed metadata in the applied config is ignored")
    func finalizersAndServerMetadata() throws {
        let existing = Self.parsed(#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","uid":"u1","resourceVersion":"7","finalizers":["a"]}}"#)
        let applied = Self.parsed(#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","uid":"other","resourceVersion":"1","finalizers":["b"]}}"#)
        let object = try Self.apply(applied, to: existing, as: "kubectl")
        #expect(object[path: ["metadata", "finalizers"]] == ["a", "b"])
        #expect(object[path: ["metadata", "uid"]] == "u1")
        #expect(object[path: ["metadata", "resourceVersion"]] == "7")
        #expect(Self.ownership(object, "kubectl") == ["f:metadata": ["f:finalizers": [#"v:"b""#: [:]]]])
    }
}
