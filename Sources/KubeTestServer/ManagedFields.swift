import JSON

// The pieces of field ownership that server-side apply and recordUpdate share: `managedFields`
// entries, the set of fields a value sets, and which lists are keyed.

let applyOperation = "Apply"
let updateOperation = "Update"

/// One entry of `metadata.managedFields`: the fields one manager owns through one kind of write.
struct ManagedFieldsEntry {
    var manager: String
    var operation: String
    var apiVersion: String
    var time: String?
    var fields: FieldSet
    /// Kept as read; this server does not record subresource writes separately.
    var subresource: String?

    init(manager: String, operation: String, apiVersion: String, time: String?, fields: FieldSet) {
        self.manager = manager
        self.operation = operation
        self.apiVersion = apiVersion
        self.time = time
        self.fields = fields
    }

    init?(_ json: JSONValue) {
        guard let manager = json["manager"]?.string, let operation = json["operation"]?.string else { return nil }
        self.init(manager: manager, operation: operation, apiVersion: json["apiVersion"]?.string ?? "",
                  time: json["time"]?.string, fields: FieldSet(fieldsV1: json["fieldsV1"] ?? .object([:])))
        subresource = json["subresource"]?.string
    }

    var json: JSONValue {
        var members: [String: JSONValue] = [
            "manager": .string(manager), "operation": .string(operation), "apiVersion": .string(apiVersion),
            "fieldsType": "FieldsV1", "fieldsV1": fields.fieldsV1,
        ]
        if let time { members["time"] = .string(time) }
        if let subresource { members["subresource"] = .string(subresource) }
        return .object(members)
    }
}

func managedFieldsEntries(of object: JSONValue) -> [ManagedFieldsEntry] {
    (object[path: ["metadata", "managedFields"]]?.array ?? []).compactMap(ManagedFieldsEntry.init)
}

/// Writes the entries that still own something; no `managedFields` member at all when none do.
func setManagedFields(_ entries: [ManagedFieldsEntry], in object: inout JSONValue) {
    let kept = entries.filter { !$0.fields.isEmpty }
    if !kept.isEmpty {
        object[path: ["metadata", "managedFields"]] = .array(kept.map(\.json))
    } else if object["metadata"] != nil {
        object[path: ["metadata", "managedFields"]] = nil
    }
}

/// Metadata the server sets, which an applied configuration cannot.
private let serverManagedMetadata = [
    "uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
    "deletionGracePeriodSeconds", "managedFields", "selfLink",
]
/// Fields nobody owns: the server's metadata and the object's identity, which must match anyway
/// (Kubernetes' field manager strips the same ones before it tracks ownership).
private let unownedMetadata = serverManagedMetadata + ["name", "namespace"]
private let unownedTopLevel = ["apiVersion", "kind"]

func withoutServerManagedMetadata(_ object: JSONValue) -> JSONValue {
    guard var metadata = object["metadata"]?.object else { return object }
    for name in serverManagedMetadata { metadata[name] = nil }
    var result = object
    result["metadata"] = .object(metadata)
    return result
}

/// An applied `null` asks for nothing; dropping nulls keeps them out of both the object and ownership.
func withoutNulls(_ value: JSONValue) -> JSONValue {
    switch value {
    case .object(let members): .object(members.filter { !$0.value.isNull }.mapValues(withoutNulls))
    case .array(let items): .array(items.map(withoutNulls))
    default: value
    }
}

/// The fields `object` sets, as server-side apply counts them: every scalar, atomic list and empty
/// object is a leaf; an element of a keyed list is owned as a whole (`.`) as well as field by field;
/// each value of a set list is owned on its own. Identity and server-managed metadata are left out.
func ownedFields(of object: JSONValue, _ shapes: ListShapes) -> FieldSet {
    guard case .object(var members) = object else { return FieldSet() }
    for name in unownedTopLevel { members[name] = nil }
    if var metadata = members["metadata"]?.object {
        for name in unownedMetadata { metadata[name] = nil }
        members["metadata"] = metadata.isEmpty ? nil : .object(metadata)
    }
    return fieldsOfMembers(members, shapes)
}

private func fieldsOfMembers(_ members: [String: JSONValue], _ shapes: ListShapes) -> FieldSet {
    var set = FieldSet()
    for (name, value) in members {
        set.children[.field(name)] = fieldsOfValue(value, named: name, shapes)
    }
    return set
}

private func fieldsOfValue(_ value: JSONValue, named name: String, _ shapes: ListShapes) -> FieldSet {
    switch value {
    case .object(let members) where !members.isEmpty:
        return fieldsOfMembers(members, shapes.child(name))
    case .array(let items) where !items.isEmpty:
        var set = FieldSet()
        switch shapes.kind(ofList: name, items: items) {
        case .keyed(let key):
            for item in items {
                var element = fieldsOfMembers(item.object ?? [:], shapes.child(name))
                element.containsSelf = true
                set.children[.key([key: item[key]!])] = element
            }
        case .set:
            for item in items { set.children[.value(item)] = .leaf }
        case .atomic:
            return .leaf
        }
        return set
    default:
        return .leaf
    }
}

/// How server-side apply tells the elements of each list apart: by the kind's strategic-merge schema,
/// or, for a custom resource (no schema), by `metadata`'s known lists and otherwise by guessing that a
/// list of objects that all have a string `name` is keyed by it.
struct ListShapes {
    enum Kind: Equatable {
        case keyed(String)
        case set
        case atomic
    }

    private var schema: StrategicMergeSchema?
    private var isTopLevel = false

    static func forObject(_ schema: StrategicMergeSchema?) -> ListShapes {
        ListShapes(schema: schema, isTopLevel: true)
    }

    func child(_ name: String) -> ListShapes {
        if let schema { return ListShapes(schema: schema.field(name)) }
        if isTopLevel && name == "metadata" { return ListShapes(schema: .objectMeta) }
        return ListShapes(schema: nil)
    }

    func kind(ofList name: String, items: [JSONValue]) -> Kind {
        guard let schema else {
            let allNamed = !items.isEmpty && items.allSatisfy { $0["name"]?.string != nil }
            return allNamed ? .keyed("name") : .atomic
        }
        switch schema.listMerge(for: name) {
        case .byKey(let key)? where items.allSatisfy({ $0[key] != nil }): return .keyed(key)
        case .set? where items.allSatisfy({ $0.object == nil && $0.array == nil }): return .set
        default: return .atomic
        }
    }
}
