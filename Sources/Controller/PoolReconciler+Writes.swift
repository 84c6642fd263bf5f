import Foundation
import JSON
import Kube

/// The reconciler's writes: children by server-side apply, shard removal, the Secret check, status,
/// conditions and Events.
extension PoolReconciler {

    /// Server-side applies `desired` unless this controller wrote the same desired object last and
    /// nobody changed it since (the same generation for Deployments — status writes do not count —
    /// the same resourceVersion for the rest, and the same replicas). `pool` is the owning pool,
    /// so that forgetting one pool forgets exactly its children's writes. An edit by hand is put back on
    /// the next reconcile; a restarted controller applies every child once (a no-op apply changes nothing).
    func applyIfChanged(_ type: ResourceType, _ desired: JSONValue, existing: KubeObject?, replicas: Int? = nil, pool: ObjectRef) async throws {
        let hash = Self.hash(desired)
        if let existing, let mine = lock.withLock({ written[Self.writtenKey(type, existing)] }), mine.hash == hash, mine.replicas == replicas {
            if type == .deployments {
                // Any spec change (replicas too) bumps the generation; an older one is a cache behind our write.
                if (existing.generation ?? 0) <= (mine.generation ?? 0) { return }
            } else if existing.resourceVersion == mine.resourceVersion {
                return
            }
        }
        var object = desired
        var annotations = object[path: ["metadata", "annotations"]]?.object ?? [:]
        annotations[Self.appliedAnnotation] = .string(hash)
        object[path: ["metadata", "annotations"]] = .object(annotations)
        let name = object[path: ["metadata", "name"]]?.string ?? ""
        let namespace = object[path: ["metadata", "namespace"]]?.string
        let applied = try await client.patch(type, name, namespace: namespace, .apply(object, fieldManager: configuration.fieldManager, force: true))
        lock.withLock {
            written[Self.writtenKey(type, applied)] = Written(pool: pool, hash: hash, generation: applied.generation, resourceVersion: applied.resourceVersion, replicas: replicas)
        }
    }

    static func writtenKey(_ type: ResourceType, _ object: KubeObject) -> String { "\(type.plural)/\(object.namespace ?? "")/\(object.name ?? "")" }

    static let appliedAnnotation = "eaas.dev/applied-hash"

    /// FNV-1a over the object's canonical text (keys sorted).
    static func hash(_ value: JSONValue) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in value.description.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        return String(hash, radix: 16)
    }

    /// Removes the pool's Deployments not in `wanted` (shards gone from the plan, model revisions retired).
    func deleteRemovedShards(pool: KubeObject, keeping wanted: Set<String>) async throws {
        guard let uid = pool.uid else { return }
        for deployment in deployments.byIndex(InformerStore.ownerIndex.name, uid) where !wanted.contains(deployment.name ?? "") {
            logger.info("removing shard", metadata: ["pool": "\(pool.key)", "deployment": "\(deployment.name ?? "")"])
            do {
                _ = try await client.delete(.deployments, deployment.name ?? "", namespace: deployment.namespace,
                                            options: DeleteOptions(propagationPolicy: .background, preconditionUID: deployment.uid))
            } catch let error as KubeAPIError where error.reason == .notFound {}
        }
    }

    func secretProblem(spec: ExpertPoolSpec, namespace: String) async throws -> SpecProblem? {
        let reference = spec.poolTokenSecret
        let key = "\(namespace)/\(reference.name)#\(reference.key)"
        if let cached = lock.withLock({ secretChecks[key] }), ContinuousClock.now - cached.at < configuration.secretRecheck, cached.problem == nil {
            return nil
        }
        var problem: SpecProblem?
        do {
            let secret = try await client.get(.secrets, reference.name, namespace: namespace)
            if secret.json[path: ["data", reference.key]] == nil && secret.json[path: ["stringData", reference.key]] == nil {
                problem = SpecProblem(reason: "SecretKeyMissing", message: "Secret \(namespace)/\(reference.name) has no key '\(reference.key)'")
            }
        } catch let error as KubeAPIError where error.reason == .notFound {
            problem = SpecProblem(reason: "SecretNotFound", message: "Secret \(namespace)/\(reference.name) (poolTokenSecret) does not exist")
        } catch let error as KubeAPIError where error.reason == .forbidden {
            // The controller reads Secrets only where a Role lets it (the chart's
            // controller.poolTokenSecrets): a pool elsewhere is a setup mistake, said as such.
            problem = SpecProblem(reason: "SecretForbidden",
                                  message: "the controller may not read Secret \(namespace)/\(reference.name) (poolTokenSecret): grant its service account get on it "
                                      + "(the chart's controller.poolTokenSecrets, or the eaas-controller-pool-token Role in Manifests/rbac); the API server said: \(error.message)")
        }
        lock.withLock { secretChecks[key] = (problem, ContinuousClock.now) }
        return problem
    }

    func publishProblem(_ problem: SpecProblem, pool: KubeObject, status: inout ExpertPoolStatus, generation: Int) async throws {
        logger.warning("pool spec problem", metadata: ["pool": "\(pool.key)", "reason": "\(problem.reason)", "message": "\(problem.message)"])
        let before = status.condition("Degraded")
        status.observedGeneration = generation
        status.conditions.set(PoolCondition(type: "Degraded", status: .true, reason: problem.reason, message: problem.message + "; running shards are left as they are",
                                             observedGeneration: generation), now: Self.timestamp())
        if before?.reason != problem.reason || before?.status != .true {
            await recordEvent(pool: pool, reason: problem.reason, message: problem.message, type: "Warning")
        }
        try await publish(status: status, pool: pool)
    }

    func publish(status: ExpertPoolStatus, pool: KubeObject) async throws {
        let json = status.specJSON
        if let existing = pool.json["status"], existing == json { return }
        _ = try await client.patchStatus(ExpertPoolCRD.resource, pool.name ?? "", namespace: pool.namespace, .merge(["status": json]))
    }

    /// Posts a core/v1 Event about the pool; failing to is logged, never fatal.
    func recordEvent(pool: KubeObject, reason: String, message: String, type: String = "Normal") async {
        let timestamp = Self.timestamp()
        let event: JSONValue = [
            "apiVersion": "v1", "kind": "Event",
            "metadata": ["name": .string("\(pool.name ?? "pool").\(String(UInt64(Date().timeIntervalSince1970 * 1e9), radix: 16))"),
                         "namespace": .string(pool.namespace ?? "default")],
            "involvedObject": ["apiVersion": .string(ExpertPoolCRD.resource.apiVersion), "kind": .string(ExpertPoolCRD.kind),
                               "name": .string(pool.name ?? ""), "namespace": .string(pool.namespace ?? "default"), "uid": .string(pool.uid ?? "")],
            "reason": .string(reason), "message": .string(message), "type": .string(type),
            "source": ["component": .string(configuration.fieldManager)],
            "reportingComponent": .string(configuration.fieldManager),
            "firstTimestamp": .string(timestamp), "lastTimestamp": .string(timestamp), "count": 1,
        ]
        do { _ = try await client.create(.events, KubeObject(event), namespace: pool.namespace) } catch {
            logger.warning("event not recorded", metadata: ["pool": "\(pool.key)", "reason": "\(reason)", "error": "\(error)"])
        }
    }

    /// Now in RFC 3339, as Kubernetes writes times.
    public static func timestamp() -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: Date())
    }

    static func list(_ names: [String]) -> String {
        names.count <= 5 ? names.joined(separator: ", ") : names.prefix(5).joined(separator: ", ") + " and \(names.count - 5) more"
    }
}
