import JSON

// Strategic merge patch, following apimachinery's pkg/util/strategicpatch (mergeMap, mergeSlice and
// the ordering rules of the "preserve order in strategic merge patch" design), applied to JSON values.

private let directiveMarker = "$patch"
private let retainKeysDirective = "$retainKeys"
private let setElementOrderPrefix = "$setElementOrder/"
private let deleteFromPrimitiveListPrefix = "$deleteFromPrimitiveList/"

/// Applies a strategic merge patch to an object of a built-in kind.
///
/// Like a merge patch, `null` deletes a member and objects merge recursively; unlike it, the lists the
/// schema names merge: lists of objects element by element on their merge key, lists of scalars as
/// sets. Directives: `{"$patch": "delete", key: value}` in a list removes that element; a
/// `{"$patch": "replace"}` element replaces the whole list; `"$patch": "replace"` in an object replaces
/// the object and `"$patch": "delete"` empties it; `$retainKeys` keeps only the listed members;
/// `$setElementOrder/<list>` orders the merged list; `$deleteFromPrimitiveList/<list>` removes values.
/// Without `$setElementOrder`, the patch's elements come first in patch order, with the elements only
/// the object had placed among them as they stood before (as apimachinery does). No directive appears
/// in the result.
public func applyStrategicMergePatch(_ target: JSONValue, _ patch: JSONValue, schema: StrategicMergeSchema) throws(PatchError) -> JSONValue {
    guard case .object(let patchMembers) = patch else {
        throw .invalid("a strategic merge patch must be a JSON object, not \(jsonTypeName(patch))")
    }
    return .object(try mergeObject(target.object, patchMembers, schema: schema, path: ""))
}

/// Merges `patch` into `original` (nil when the object is new, which also strips the patch of nulls
/// and directives). `path` (".spec.template") names the object in error messages.
private func mergeObject(_ original: [String: JSONValue]?, _ patch: [String: JSONValue],
                         schema: StrategicMergeSchema, path: String) throws(PatchError) -> [String: JSONValue] {
    var patch = patch
    if let directive = patch.removeValue(forKey: directiveMarker) {
        switch directive.string {
        case "replace": return try mergeObject(nil, patch, schema: schema, path: path)
        case "delete": return [:]
        default: throw .invalid("\(named(path)): unknown $patch directive \(directive.compact)")
        }
    }
    var result = original ?? [:]

    if let retained = patch.removeValue(forKey: retainKeysDirective) {
        try applyRetainKeys(retained, to: &result, patch: patch, path: path)
    }

    // Lists with an order directive are merged and ordered together, then left out of the loop below.
    var ordered: Set<String> = []
    for key in patch.keys.sorted() where key.hasPrefix(setElementOrderPrefix) {
        let field = String(key.dropFirst(setElementOrderPrefix.count))
        if let list = try mergeInOrder(patch[key]!, field: field, result[field], patch[field], schema: schema, path: path) {
            result[field] = .array(list)
            ordered.insert(field)
        }
    }

    for (key, value) in patch where !key.hasPrefix("$") && !ordered.contains(key) {
        let fieldPath = path + "." + key
        if value.isNull {
            result[key] = nil
            continue
        }
        switch (result[key], value) {
        case (.object(let current)?, .object(let patchObject)):
            result[key] = .object(try mergeObject(current, patchObject, schema: schema.field(key), path: fieldPath))
        case (.array(let current)?, .array(let patchList)):
            result[key] = .array(try mergeList(current, patchList, field: key, in: schema, path: fieldPath))
        default:
            // New member, scalar, or a change of type: the patch value replaces, cleaned of directives.
            result[key] = try newValue(value, field: key, in: schema, path: fieldPath)
        }
    }

    // Deletions come after additions, as apimachinery does when $setElementOrder is present.
    for (key, value) in patch where key.hasPrefix("$") {
        if key.hasPrefix(deleteFromPrimitiveListPrefix) {
            let field = String(key.dropFirst(deleteFromPrimitiveListPrefix.count))
            guard case .array(let doomed) = value else { throw .invalid("\(named(path)): \(key) must be a list") }
            if case .array(let current)? = result[field] {
                result[field] = .array(current.filter { item in !doomed.contains { jsonValuesEqual($0, item) } })
            }
        } else if !key.hasPrefix(setElementOrderPrefix) {
            throw .invalid("\(named(path)): unknown directive \(key)")
        }
    }
    return result
}

/// A patch value for a member the object does not have (or has with another type), with its nulls and
/// directives resolved as if merged into nothing.
private func newValue(_ value: JSONValue, field: String, in schema: StrategicMergeSchema, path: String) throws(PatchError) -> JSONValue {
    switch value {
    case .object(let members): .object(try mergeObject(nil, members, schema: schema.field(field), path: path))
    case .array(let items): .array(try mergeList([], items, field: field, in: schema, path: path))
    default: value
    }
}

/// `$retainKeys`: members of the object not listed go; a patch that sets a member not listed is invalid.
private func applyRetainKeys(_ retained: JSONValue, to object: inout [String: JSONValue], patch: [String: JSONValue], path: String) throws(PatchError) {
    guard case .array(let list) = retained else { throw .invalid("\(named(path)): $retainKeys must be a list of field names") }
    let keep = Set(list.compactMap(\.string))
    for (key, value) in patch where !value.isNull && !key.hasPrefix("$") && !keep.contains(key) {
        throw .invalid("\(named(path)): \(key) is set by the patch but not listed in $retainKeys")
    }
    object = object.filter { keep.contains($0.key) }
}

// MARK: - Lists

/// Merges list field `field` as the schema says: by key, as a set, or (not named) by replacing it.
private func mergeList(_ original: [JSONValue], _ patch: [JSONValue], field: String,
                       in schema: StrategicMergeSchema, path: String) throws(PatchError) -> [JSONValue] {
    switch schema.listMerge(for: field) {
    case .byKey(let key)?:
        return try mergeKeyedList(original, patch, key: key, elementSchema: schema.field(field), path: path)
    case .set?:
        var merged: [JSONValue] = []
        for item in original + patch where !merged.contains(where: { jsonValuesEqual($0, item) }) { merged.append(item) }
        let inPatch = merged.filter { item in patch.contains { jsonValuesEqual($0, item) } }
        let serverOnly = merged.filter { item in !patch.contains { jsonValuesEqual($0, item) } }
        return interleave(patchItems: inPatch, patchOrder: patch, serverOnly: serverOnly, serverOrder: original, identity: { $0 })
    case nil:
        // Atomic: the patch list is the new list. Directive elements mean nothing here and are dropped.
        var result: [JSONValue] = []
        for item in patch {
            guard case .object(let members) = item else { result.append(item); continue }
            if members[directiveMarker] != nil { continue }
            result.append(.object(try mergeObject(nil, members, schema: schema.field(field), path: path)))
        }
        return result
    }
}

/// A list of objects merged element by element on `key`, after `$patch` elements are applied.
private func mergeKeyedList(_ original: [JSONValue], _ patch: [JSONValue], key: String,
                            elementSchema: StrategicMergeSchema, path: String) throws(PatchError) -> [JSONValue] {
    var current = original
    for item in current where item.object == nil {
        throw .invalid("\(named(path)): element \(item.compact) is not an object, so it cannot be merged by \(key)")
    }
    var elements: [[String: JSONValue]] = []
    var replaceList = false
    for item in patch {
        guard case .object(let members) = item else {
            throw .invalid("\(named(path)): patch element \(item.compact) is not an object, so it cannot be merged by \(key)")
        }
        guard let directive = members[directiveMarker] else { elements.append(members); continue }
        switch directive.string {
        case "delete":
            guard let doomed = members[key] else { throw .invalid("\(named(path)): $patch delete element has no merge key \"\(key)\"") }
            current.removeAll { $0[key].map { jsonValuesEqual($0, doomed) } ?? false }
        case "replace":
            replaceList = true
        case "merge":
            throw .invalid("\(named(path)): $patch merge is not supported in a list")
        default:
            throw .invalid("\(named(path)): unknown $patch directive \(directive.compact)")
        }
    }
    if replaceList {
        var result: [JSONValue] = []
        for members in elements { result.append(.object(try mergeObject(nil, members, schema: elementSchema, path: path))) }
        return result
    }

    var merged = current
    for members in elements {
        guard let keyValue = members[key] else {
            throw .invalid("\(named(path)): element \(JSONValue.object(members).compact) has no merge key \"\(key)\"")
        }
        let elementPath = path + "[\(key)=\(keyValue.compact)]"
        if let index = merged.firstIndex(where: { $0[key].map { jsonValuesEqual($0, keyValue) } ?? false }) {
            merged[index] = .object(try mergeObject(merged[index].object, members, schema: elementSchema, path: elementPath))
        } else {
            merged.append(.object(try mergeObject(nil, members, schema: elementSchema, path: elementPath)))
        }
    }
    let patchKeys = elements.compactMap { $0[key] }
    let isInPatch = { (item: JSONValue) in patchKeys.contains { jsonValuesEqual($0, item[key] ?? .null) } }
    return interleave(patchItems: merged.filter(isInPatch), patchOrder: elements.map(JSONValue.object),
                      serverOnly: merged.filter { !isInPatch($0) }, serverOrder: current, identity: { $0[key] })
}

/// `$setElementOrder/<field>`: merges the list (if the patch has it) and orders the result by `order`.
/// Returns nil when neither side has the list, or the patch deletes it, so that the usual rules apply.
private func mergeInOrder(_ orderDirective: JSONValue, field: String, _ original: JSONValue?, _ patch: JSONValue?,
                          schema: StrategicMergeSchema, path: String) throws(PatchError) -> [JSONValue]? {
    let fieldPath = path + "." + field
    guard case .array(let order) = orderDirective else { throw .invalid("\(named(fieldPath)): $setElementOrder/\(field) must be a list") }
    guard let strategy = schema.listMerge(for: field) else { return nil }  // an atomic list is replaced as sent
    if patch?.isNull == true { return nil }
    let originalList = original?.array
    let patchList = patch?.array
    if patch != nil && patchList == nil { throw .invalid("\(named(fieldPath)) must be a list") }

    let identity: (JSONValue) -> JSONValue?
    switch strategy {
    case .byKey(let key):
        identity = { $0[key] }
        for item in order where item[key] == nil {
            throw .invalid("\(named(fieldPath)): $setElementOrder/\(field) element \(item.compact) has no merge key \"\(key)\"")
        }
    case .set:
        identity = { $0 }
    }
    try checkOrder(of: patchList ?? [], against: order, identity: identity, field: field, path: fieldPath)

    let merged: [JSONValue]
    switch (originalList, patchList) {
    case (nil, nil): return nil
    case (let originalList?, nil): merged = originalList
    case (let originalList, let patchList?): merged = try mergeList(originalList ?? [], patchList, field: field, in: schema, path: fieldPath)
    }
    let isOrdered = { (item: JSONValue) in order.contains { jsonValuesEqual(identity($0) ?? .null, identity(item) ?? .null) } }
    return interleave(patchItems: merged.filter(isOrdered), patchOrder: order,
                      serverOnly: merged.filter { !isOrdered($0) }, serverOrder: originalList ?? [], identity: identity)
}

/// The patch list's elements (other than directives) must appear in `$setElementOrder` in the same order.
private func checkOrder(of patchList: [JSONValue], against order: [JSONValue], identity: (JSONValue) -> JSONValue?,
                        field: String, path: String) throws(PatchError) {
    let elements = patchList.filter { $0[directiveMarker] == nil }
    guard !elements.isEmpty, !order.isEmpty else { return }
    var patchIndex = 0
    for item in order where patchIndex < elements.count {
        if jsonValuesEqual(identity(item) ?? .null, identity(elements[patchIndex]) ?? .null) { patchIndex += 1 }
    }
    if patchIndex < elements.count {
        throw .invalid("\(named(path)): the patch list's elements are not in the order $setElementOrder/\(field) gives")
    }
}

/// apimachinery's normalizeElementOrder: the patch's elements sorted by `patchOrder`, the elements only
/// the server had sorted by their old order, then the two interleaved: a server-only element goes
/// before a patch element only when both were in the old list and it stood before it there.
private func interleave(patchItems: [JSONValue], patchOrder: [JSONValue], serverOnly: [JSONValue], serverOrder: [JSONValue],
                        identity: (JSONValue) -> JSONValue?) -> [JSONValue] {
    func position(of item: JSONValue, in order: [JSONValue]) -> Int? {
        guard let id = identity(item) else { return nil }
        return order.firstIndex { identity($0).map { jsonValuesEqual($0, id) } ?? false }
    }
    func sorted(_ items: [JSONValue], by order: [JSONValue]) -> [JSONValue] {
        items.enumerated()
            .map { (rank: position(of: $0.element, in: order) ?? Int.max, offset: $0.offset, item: $0.element) }
            .sorted { ($0.rank, $0.offset) < ($1.rank, $1.offset) }
            .map(\.item)
    }
    let fromPatch = sorted(patchItems, by: patchOrder), fromServer = sorted(serverOnly, by: serverOrder)
    var result: [JSONValue] = []
    var p = 0, s = 0
    while p < fromPatch.count || s < fromServer.count {
        if p == fromPatch.count { result.append(fromServer[s]); s += 1; continue }
        if s == fromServer.count { result.append(fromPatch[p]); p += 1; continue }
        if let serverRank = position(of: fromServer[s], in: serverOrder),
           let patchRank = position(of: fromPatch[p], in: serverOrder), serverRank < patchRank {
            result.append(fromServer[s]); s += 1
        } else {
            result.append(fromPatch[p]); p += 1
        }
    }
    return result
}

/// "the patch" at the top, ".spec.template" below.
private func named(_ path: String) -> String { path.isEmpty ? "the patch" : path }
