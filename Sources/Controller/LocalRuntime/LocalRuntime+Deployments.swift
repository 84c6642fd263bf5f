import Foundation
import JSON
import Kube

/// The Deployment controller of the local runtime: pods per template hash, scale, and rolling
/// updates with one surge pod and none unavailable, as a ReplicaSet controller would.
extension LocalRuntime {

    func syncDeployment(_ deployment: KubeObject, pods: InformerStore) async throws {
        guard let uid = deployment.uid, let name = deployment.name, let template = deployment.json[path: ["spec", "template"]] else { return }
        let hash = String(PoolReconciler.hash(template).prefix(10))
        let desired = deployment.json[path: ["spec", "replicas"]]?.int ?? 1
        let owned = pods.list().filter { pod in
            pod.deletionTimestamp == nil && pod.ownerReferences.contains { $0["uid"]?.string == uid }
                && !["Failed", "Succeeded"].contains(pod.json[path: ["status", "phase"]]?.string ?? "")
        }
        let current = owned.filter { $0.labels["pod-template-hash"] == hash }
        let old = owned.filter { $0.labels["pod-template-hash"] != hash }
        let seen = Set(pods.list().compactMap(\.name))
        let pending: Int = lock.withLock {
            let now = ContinuousClock.now
            let left = (pendingCreates[uid] ?? [:]).filter { !seen.contains($0.key) && now - $0.value < .seconds(30) }
            pendingCreates[uid] = left.isEmpty ? nil : left
            return left.count
        }
        let isReady: (KubeObject) -> Bool = { PodView($0).isReady }
        let readyCount = owned.filter(isReady).count

        var creates = 0
        var deletions: [KubeObject] = []
        if old.isEmpty {
            if current.count + pending < desired { creates = desired - current.count - pending }
            if current.count > desired {
                // Not-ready pods go first, then the newest.
                deletions = Array(current.sorted { a, b in
                    isReady(a) != isReady(b) ? !isReady(a) : (a.json[path: ["metadata", "creationTimestamp"]]?.string ?? "") > (b.json[path: ["metadata", "creationTimestamp"]]?.string ?? "")
                }.prefix(current.count - desired))
            }
        } else {
            // Rolling update: one surge pod, none unavailable.
            if current.count + pending < desired && owned.count + pending < desired + 1 { creates = 1 }
            if let victim = old.first(where: { !isReady($0) }) ?? (readyCount - 1 >= desired ? old.first(where: isReady) : nil) {
                deletions = [victim]
            }
        }
        if creates > 0, let backoff = lock.withLock({ creationBackoff[uid] }), ContinuousClock.now < backoff.until { creates = 0 }
        for _ in 0..<creates {
            let pod = try await createPod(for: deployment, name: name, hash: hash, template: template)
            lock.withLock { pendingCreates[uid, default: [:]][pod] = .now }
        }
        for pod in deletions {
            do { _ = try await client.delete(.pods, pod.name ?? "", namespace: pod.namespace) } catch let error as KubeAPIError where error.reason == .notFound {}
        }

        var status: JSONValue = [
            "observedGeneration": .int(deployment.generation ?? 1),
            "replicas": .int(owned.count),
            "updatedReplicas": .int(current.count),
            "readyReplicas": .int(readyCount),
            "availableReplicas": .int(readyCount),
        ]
        if owned.count - readyCount > 0 { status["unavailableReplicas"] = .int(owned.count - readyCount) }
        let existing = deployment.json["status"] ?? [:]
        if ["observedGeneration", "replicas", "updatedReplicas", "readyReplicas", "availableReplicas", "unavailableReplicas"].contains(where: {
            (existing[$0]?.int ?? 0) != (status[$0]?.int ?? 0)
        }) {
            _ = try await client.patchStatus(.deployments, name, namespace: deployment.namespace, .merge(["status": status]))
        }
    }

    /// Creates one pod of the template; returns its name.
    func createPod(for deployment: KubeObject, name: String, hash: String, template: JSONValue) async throws -> String {
        let suffix = String((0..<5).map { _ in "bcdfghjklmnpqrstvwxz2456789".randomElement()! })
        var metadata = template["metadata"]?.object ?? [:]
        var labels = metadata["labels"]?.object ?? [:]
        labels["pod-template-hash"] = .string(hash)
        metadata["labels"] = .object(labels)
        metadata["name"] = .string("\(name)-\(hash)-\(suffix)")
        metadata["namespace"] = .string(deployment.namespace ?? configuration.namespace)
        metadata["ownerReferences"] = [deployment.controllerReference()]
        let pod: JSONValue = ["apiVersion": "v1", "kind": "Pod", "metadata": .object(metadata), "spec": template["spec"] ?? [:]]
        _ = try await client.create(.pods, KubeObject(pod), namespace: deployment.namespace)
        return "\(name)-\(hash)-\(suffix)"
    }
}
