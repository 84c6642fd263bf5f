import JSON

// Server-side apply and field ownership (`metadata.managedFields`), after Kubernetes' field manager and
// structured-merge-diff, reduced to what a test server needs: who owns which fields, conflicts when an
// apply changes a field someone else owns, and removal of fields an applier stopped applying.

/// An apply changed fields that other managers own. The server answers 409 Conflict, one cause per field.
public struct ApplyConflict: Error, Sendable, CustomStringConvertible {
    /// One field (`.spec.replicas`, `.spec.template.spec.containers[name="web"].image`) and its owner.
    public struct Conflict: Sendable, Hashable {
        public let manager: String
        public let field: String
    }

    public let conflicts: [Conflict]

    /// Worded like Kubernetes: `Apply failed with 1 conflict: conflict with "kubectl": .spec.replicas`.
    public var description: String {
        var managers: [String] = []
        for conflict in conflicts where !managers.contains(conflict.manager) { managers.append(conflict.manager) }
        let parts = managers.map { manager in
            let fields = conflicts.filter { $0.manager == manager }.map(\.field)
            return fields.count == 1
                ? "conflict with \"\(manager)\": \(fields[0])"
                : "conflicts with \"\(manager)\":\n" + fields.map { "- " + $0 }.joined(separator: "\n")
        }
        let count = conflicts.count == 1 ? "1 conflict" : "\(conflicts.count) conflicts"
        return "Apply failed with \(count): " + parts.joined(separator: "\n")
    }
}

/// Applies `applied` (a full or partial configuration) for `manager` and returns the new object,
/// with `metadata.managedFields` recording that `manager` now owns exactly the fields it applied.
///
/// Fields in `applied` are set (objects merge, lists of objects with a merge key merge by it, other
/// lists are replaced). Fields this manager applied last time but not now are removed, unless another
/// manager owns them too. A field whose value would change and that another manager owns is a conflict;
/// with `force` the field is taken from that manager instead. `schema` is the kind's strategic-merge
/// schema; nil for a custom resource, where a list of objects that all have a `name` merges by name.
public func serverSideApply(existing: JSONValue?, applied: JSONValue, manager: String, force: Bool,
                            apiVersion: String, now: String, schema: StrategicMergeSchema?) throws(ApplyConflict) -> JSONValue {
    let shapes = ListShapes.forObject(schema)
    let config = withoutNulls(withoutServerManagedMetadata(applied))
    let live = existing ?? .object([:])
    var entries = managedFieldsEntries(of: live)
    let appliedFields = ownedFields(of: config, shapes)
    let applyEntryIndex = entries.firstIndex { $0.manager == manager && $0.operation == applyOperation }
    let previousFields = applyEntryIndex.map { entries[$0].fields } ?? FieldSet()

    let merged = mergeApplied(config, into: live, shapes: shapes)
    let conflicts = conflictingFields(appliedFields, live: live, merged: merged, manager: manager, entries: entries)
    if !conflicts.isEmpty {
        guard force else {
            throw ApplyConflict(conflicts: conflicts.map { .init(manager: $0.manager, field: describe($0.path)) })
        }
        for conflict in conflicts {
            for index in entries.indices where entries[index].manager == conflict.manager {
                entries[index].fields.removeSubtree(at: conflict.path)
            }
        }
    }

    // Fields this manager stopped applying leave the object, unless someone else (or this manager's own
    // non-apply writes) still owns them or something inside them. An element that stays keeps its key.
    var result = merged
    var stillOwned = appliedFields
    for (index, entry) in entries.enumerated() where index != applyEntryIndex { stillOwned = stillOwned.union(entry.fields) }
    for path in previousFields.subtracting(appliedFields).paths where !stillOwned.hasAnything(atOrBelow: path) && !isElementKey(path) {
        removeValue(at: path[...], from: &result, keeping: stillOwned, above: [])
    }

    let entry = ManagedFieldsEntry(manager: manager, operation: applyOperation, apiVersion: apiVersion, time: now, fields: appliedFields)
    if let applyEntryIndex { entries[applyEntryIndex] = entry } else { entries.append(entry) }
    setManagedFields(entries, in: &result)
    return result
}

/// Records a write that is not an apply (create, update, patch) by `manager`: the fields it added or
/// changed become owned by `manager` (operation "Update") and no one else; fields it removed are owned
/// by no one. Returns `new` with `metadata.managedFields` updated. The ownership record starts from
/// `old`'s, unless `new` carries managedFields of its own that differ (a client may rewrite them).
public func recordUpdate(old: JSONValue?, new: JSONValue, manager: String, apiVersion: String, now: String,
                         schema: StrategicMergeSchema?) -> JSONValue {
    let shapes = ListShapes.forObject(schema)
    let before = old.map { ownedFields(of: $0, shapes) } ?? FieldSet()
    let after = ownedFields(of: new, shapes)
    // Added fields, plus values that were there before and differ now.
    var changed = after.subtracting(before)
    if let old {
        for path in after.paths where before.contains(path) && after.node(at: path)!.isLeaf {
            if let oldValue = value(at: path[...], in: old), let newValue = value(at: path[...], in: new),
               !jsonValuesEqual(oldValue, newValue) {
                changed.insert(path)
            }
        }
    }
    let removed = before.subtracting(after)

    let oldRecord = old?[path: ["metadata", "managedFields"]]
    let newRecord = new[path: ["metadata", "managedFields"]]
    let clientRewrote = newRecord.map { record in oldRecord.map { !jsonValuesEqual($0, record) } ?? true } ?? false
    var entries = managedFieldsEntries(of: clientRewrote ? new : (old ?? new))

    let ownIndex = entries.firstIndex { $0.manager == manager && $0.operation == updateOperation }
    for index in entries.indices {
        entries[index].fields = index == ownIndex
            ? entries[index].fields.union(changed).subtracting(removed)
            : entries[index].fields.subtracting(changed).subtracting(removed)
    }
    if let ownIndex, !changed.isEmpty {
        entries[ownIndex].apiVersion = apiVersion
        entries[ownIndex].time = now
    } else if !changed.isEmpty {
        entries.append(ManagedFieldsEntry(manager: manager, operation: updateOperation, apiVersion: apiVersion, time: now, fields: changed))
    }
    var result = new
    setManagedFields(entries, in: &result)
    return result
}

// MARK: - Conflicts and merging

/// A field the apply would change that another manager owns.
private struct OwnedFieldConflict {
    let manager: String
    let path: FieldPath
}

/// Fields in the applied set that the apply changes (a value that differs after merging, or a list
/// element the live object lacks), each with every other manager that owns it or something inside it.
/// Comparing with the merged object rather than the applied value matters for empty objects and keyed
/// lists, which merge into what is there instead of replacing it.
private func conflictingFields(_ appliedFields: FieldSet, live: JSONValue, merged: JSONValue, manager: String,
                               entries: [ManagedFieldsEntry]) -> [OwnedFieldConflict] {
    var conflicts: [OwnedFieldConflict] = []
    for path in appliedFields.paths {
        let liveValue = value(at: path[...], in: live)
        let changed: Bool
        if appliedFields.node(at: path)!.isLeaf, let mergedValue = value(at: path[...], in: merged) {
            changed = liveValue.map { !jsonValuesEqual($0, mergedValue) } ?? true
        } else {
            changed = liveValue == nil
        }
        guard changed else { continue }
        for entry in entries where entry.manager != manager && entry.fields.hasAnything(atOrBelow: path) {
            if !conflicts.contains(where: { $0.manager == entry.manager && $0.path == path }) {
                conflicts.append(OwnedFieldConflict(manager: entry.manager, path: path))
            }
        }
    }
    return conflicts
}

/// The applied configuration merged into the live object: objects member by member, keyed lists
/// element by element (new elements at the end), set lists as a union, anything else replaced.
private func mergeApplied(_ applied: JSONValue, into live: JSONValue?, shapes: ListShapes) -> JSONValue {
    guard case .object(let members) = applied else { return applied }
    var result = live?.object ?? [:]
    for (name, value) in members {
        guard case .array(let items) = value else {
            result[name] = value.object != nil ? mergeApplied(value, into: result[name], shapes: shapes.child(name)) : value
            continue
        }
        let current = result[name]?.array ?? []
        // The live elements count too: an empty applied list of a keyed list still merges.
        switch shapes.kind(ofList: name, items: items + current) {
        case .keyed(let key):
            var merged = current
            for item in items {
                if let index = merged.firstIndex(where: { element in element[key].map { jsonValuesEqual($0, item[key]!) } ?? false }) {
                    merged[index] = mergeApplied(item, into: merged[index], shapes: shapes.child(name))
                } else {
                    merged.append(item)
                }
            }
            result[name] = .array(merged)
        case .set:
            var merged = current
            for item in items where !merged.contains(where: { jsonValuesEqual($0, item) }) { merged.append(item) }
            result[name] = .array(merged)
        case .atomic:
            result[name] = value
        }
    }
    return .object(result)
}

/// Removes the value at `path` from `object`; an object or list left empty by that goes too, unless
/// someone owns it. Returns whether anything was removed.
@discardableResult
private func removeValue(at path: ArraySlice<FieldPathElement>, from object: inout JSONValue,
                         keeping owned: FieldSet, above: FieldPath) -> Bool {
    guard let step = path.first else { return false }
    let rest = path.dropFirst()
    if case .field(let name) = step, case .object(var members) = object {
        guard var child = members[name] else { return false }
        if rest.isEmpty {
            members[name] = nil
        } else {
            guard removeValue(at: rest, from: &child, keeping: owned, above: above + [step]) else { return false }
            members[name] = isEmptyContainer(child) && !owned.hasAnything(atOrBelow: above + [step]) ? nil : child
        }
        object = .object(members)
        return true
    }
    guard case .array(var items) = object, let index = elementIndex(step, in: items) else { return false }
    if rest.isEmpty {
        items.remove(at: index)
    } else {
        guard removeValue(at: rest, from: &items[index], keeping: owned, above: above + [step]) else { return false }
    }
    object = .array(items)
    return true
}

/// Whether `path` is the key field of a list element (`…[name="web"].name`).
private func isElementKey(_ path: FieldPath) -> Bool {
    guard path.count >= 2, case .field(let name) = path[path.count - 1], case .key(let key) = path[path.count - 2] else { return false }
    return key[name] != nil
}

private func isEmptyContainer(_ value: JSONValue) -> Bool { value.object?.isEmpty ?? value.array?.isEmpty ?? false }

/// Where the list element `step` names is in `items`.
private func elementIndex(_ step: FieldPathElement, in items: [JSONValue]) -> Int? {
    if case .index(let index) = step { return index < items.count ? index : nil }
    return items.firstIndex { matches($0, step) }
}

/// Whether list element `element` is the one `step` names.
private func matches(_ element: JSONValue, _ step: FieldPathElement) -> Bool {
    switch step {
    case .key(let key): key.allSatisfy { name, value in element[name].map { jsonValuesEqual($0, value) } ?? false }
    case .value(let value): jsonValuesEqual(element, value)
    case .field, .index: false
    }
}

/// The value a field path names in `object`, or nil when it is not there.
private func value(at path: ArraySlice<FieldPathElement>, in object: JSONValue) -> JSONValue? {
    guard let step = path.first else { return object }
    let next: JSONValue?
    switch step {
    case .field(let name): next = object[name]
    case .key, .value, .index: next = object.array.flatMap { items in elementIndex(step, in: items).map { items[$0] } }
    }
    return next.flatMap { value(at: path.dropFirst(), in: $0) }
}
