import JSON
import Kube

/// `DeleteOptions` as the test server reads them from the body and query.
struct DeleteRequest: Sendable {
    enum Propagation: String, Sendable { case background = "Background", foreground = "Foreground", orphan = "Orphan" }
    var propagation: Propagation?
    var preconditionUID: String?
    var preconditionResourceVersion: String?
    var dryRun = false
}

extension APIState {
    /// Deletes an object: at once when nothing holds it, else it gets a deletionTimestamp and waits
    /// for its finalizers (including the garbage collector's `foregroundDeletion` and `orphan`).
    /// Answers the object's last state.
    func delete(_ resource: ServedResource, namespace: String?, name: String, request: DeleteRequest) throws(APIError) -> JSONValue {
        try locked { () throws(APIError) -> JSONValue in
            let key = KubeObject.key(namespace: resource.type.namespaced ? namespace : nil, name: name)
            guard let old = collection(resource.type).objects[key] else { throw .notFound(resource.type.plural, name, group: resource.type.group) }
            let object = KubeObject(old)
            if let uid = request.preconditionUID, uid != object.uid {
                throw .conflict(resource.type.plural, name, group: resource.type.group,
                                "Precondition failed: UID in precondition: \(uid), UID in object meta: \(object.uid ?? "")")
            }
            if let version = request.preconditionResourceVersion, version != object.resourceVersion {
                throw .conflict(resource.type.plural, name, group: resource.type.group,
                                "Precondition failed: ResourceVersion in precondition: \(version), ResourceVersion in object meta: \(object.resourceVersion ?? "")")
            }
            if request.dryRun { return withAPIVersion(old, resource.type.apiVersion) }
            return withAPIVersion(deleteObject(resource.type, key: key, old: old, propagation: request.propagation ?? .background),
                                  resource.type.apiVersion)
        }
    }

    /// The deletion itself, also used by the garbage collector and namespace deletion.
    @discardableResult
    func deleteObject(_ type: ResourceType, key: String, old: JSONValue, propagation: DeleteRequest.Propagation) -> JSONValue {
        var object = KubeObject(old)
        if type == .namespaces { return terminateNamespace(key: key, old: old) }
        if type == .customResourceDefinitions { removeCustomResources(of: old) }
        var finalizers = object.finalizers
        switch propagation {
        case .foreground where !finalizers.contains("foregroundDeletion"): finalizers.append("foregroundDeletion")
        case .orphan where !finalizers.contains("orphan"): finalizers.append("orphan")
        default: break
        }
        if finalizers.isEmpty && object.deletionTimestamp == nil || type == .namespaces && finalizers.isEmpty {
            commit(type, key: key, old: old, new: nil)
            didRemove(old)
            return old
        }
        if object.deletionTimestamp == nil {
            object.json[path: ["metadata", "deletionTimestamp"]] = .string(now())
            object.json[path: ["metadata", "deletionGracePeriodSeconds"]] = 0
        }
        object.finalizers = finalizers
        guard object.json != old else { return old }
        var current = commit(type, key: key, old: old, new: object.json)!
        let uid = object.uid ?? ""
        switch propagation {
        case .foreground:
            for ref in dependents[uid] ?? [] {
                // A dependent with another live owner only loses this reference, as the garbage collector does.
                if hasOtherLiveOwner(ref, than: uid) { removeOwnerReference(uid, from: ref) } else { deleteDependent(ref, propagation: .foreground) }
            }
            current = finishForegroundDeletion(uid: uid) ?? current
        case .orphan:
            for ref in dependents[uid] ?? [] { removeOwnerReference(uid, from: ref) }
            current = removeFinalizer("orphan", uid: uid) ?? current
        case .background: break
        }
        return current
    }

    /// After an object is gone: its dependents lose an owner (and are deleted when none is left),
    /// and an owner waiting in foreground deletion may now finish.
    func didRemove(_ removed: JSONValue) {
        let object = KubeObject(removed)
        if let namespace = object.namespace { finishNamespaceIfEmpty(namespace) }
        for owner in object.ownerReferences {
            if let ownerUID = owner["uid"]?.string { _ = finishForegroundDeletion(uid: ownerUID) }
        }
        guard let uid = object.uid else { return }
        for ref in dependents[uid] ?? [] {
            if hasOtherLiveOwner(ref, than: uid) {
                removeOwnerReference(uid, from: ref)
            } else {
                deleteDependent(ref, propagation: .background)
            }
        }
    }

    private func hasOtherLiveOwner(_ ref: ObjectRef, than uid: String) -> Bool {
        guard let dependent = collection(id: ref.collection)?.objects[ref.key] else { return false }
        return KubeObject(dependent).ownerReferences.contains { reference in
            guard let ownerUID = reference["uid"]?.string, ownerUID != uid else { return false }
            return self.object(withUID: ownerUID) != nil
        }
    }

    private func deleteDependent(_ ref: ObjectRef, propagation: DeleteRequest.Propagation) {
        guard let dependent = collection(id: ref.collection)?.objects[ref.key],
              let resource = allServed.first(where: { Self.collectionID($0.type) == ref.collection }) else { return }
        if KubeObject(dependent).deletionTimestamp != nil { return }
        deleteObject(resource.type, key: ref.key, old: dependent, propagation: propagation)
    }

    private func removeOwnerReference(_ uid: String, from ref: ObjectRef) {
        guard let dependent = collection(id: ref.collection)?.objects[ref.key],
              let resource = allServed.first(where: { Self.collectionID($0.type) == ref.collection }) else { return }
        var object = KubeObject(dependent)
        object.ownerReferences = object.ownerReferences.filter { $0["uid"]?.string != uid }
        commit(resource.type, key: ref.key, old: dependent, new: object.json)
    }

    /// Removes `foregroundDeletion` from the owner once no dependent blocks it any longer.
    private func finishForegroundDeletion(uid: String) -> JSONValue? {
        guard let (type, _, owner) = object(withUID: uid), KubeObject(owner).finalizers.contains("foregroundDeletion") else { return nil }
        let blocking = (dependents[uid] ?? []).contains { ref in
            guard let dependent = collection(id: ref.collection)?.objects[ref.key] else { return false }
            return KubeObject(dependent).ownerReferences.contains { $0["uid"]?.string == uid && $0["blockOwnerDeletion"]?.bool == true }
        }
        if blocking { return nil }
        _ = type
        return removeFinalizer("foregroundDeletion", uid: uid)
    }

    /// Removes one of the garbage collector's finalizers; the object goes when none is left.
    private func removeFinalizer(_ finalizer: String, uid: String) -> JSONValue? {
        guard let (type, key, old) = object(withUID: uid) else { return nil }
        var object = KubeObject(old)
        object.finalizers = object.finalizers.filter { $0 != finalizer }
        if object.finalizers.isEmpty {
            commit(type, key: key, old: old, new: nil)
            didRemove(old)
            return object.json
        }
        return commit(type, key: key, old: old, new: object.json)
    }

    /// A namespace goes Terminating, its contents are deleted, and it is removed once nothing is
    /// left in it (objects held by finalizers keep it Terminating).
    private func terminateNamespace(key: String, old: JSONValue) -> JSONValue {
        var object = KubeObject(old)
        guard object.deletionTimestamp == nil else { return old }
        object.json[path: ["metadata", "deletionTimestamp"]] = .string(now())
        object.json[path: ["metadata", "deletionGracePeriodSeconds"]] = 0
        object.json[path: ["status", "phase"]] = "Terminating"
        let terminating = commit(.namespaces, key: key, old: old, new: object.json)!
        deleteNamespaceContents(key)
        return finishNamespaceIfEmpty(key) ?? collection(.namespaces).objects[key] ?? terminating
    }

    /// Removes a Terminating namespace when its last object is gone; returns its last state then.
    @discardableResult
    private func finishNamespaceIfEmpty(_ namespace: String) -> JSONValue? {
        guard let current = collection(.namespaces).objects[namespace], KubeObject(current).deletionTimestamp != nil,
              KubeObject(current).finalizers.isEmpty else { return nil }
        let prefix = namespace + "/"
        for resource in allServed where resource.type.namespaced {
            if collection(resource.type).objects.keys.contains(where: { $0.hasPrefix(prefix) }) { return nil }
        }
        commit(.namespaces, key: namespace, old: current, new: nil)
        return current
    }

    /// Deleting a CRD deletes its custom resources, ends their watches and stops serving them.
    private func removeCustomResources(of crd: JSONValue) {
        guard let group = crd[path: ["spec", "group"]]?.string, let plural = crd[path: ["spec", "names", "plural"]]?.string else { return }
        let served = allServed.filter { $0.type.group == group && $0.type.plural == plural }
        if let resource = served.first {
            let collection = collection(resource.type)
            for key in collection.objects.keys.sorted() {
                guard let object = collection.objects[key] else { continue }
                commit(resource.type, key: key, old: object, new: nil)
                didRemove(object)
            }
            for watcher in collection.watchers.values { watcher.continuation.finish() }
            collection.watchers.removeAll()
        }
        unregister(group: group, plural: plural)
    }

    /// The namespace controller's work: everything in the namespace is deleted first.
    private func deleteNamespaceContents(_ namespace: String) {
        for resource in allServed where resource.type.namespaced {
            let collection = collection(resource.type)
            for key in collection.objects.keys.sorted() where key.hasPrefix(namespace + "/") {
                guard let object = collection.objects[key], KubeObject(object).deletionTimestamp == nil else { continue }
                deleteObject(resource.type, key: key, old: object, propagation: .background)
            }
        }
    }
}
