/// Whether a pool's ready pods serve one checkpoint, from the `eaas_model_info` digest each pod
/// reports: the `ModelsAgree` condition.
///
/// A worker refuses pods whose model differs from its own (the handshake carries the digest), so
/// pods of two checkpoints in one pool (a rollout to a new revision, a Deployment edited by hand)
/// serve only the workers of their own model. The controller cannot tell which one is right, only
/// that they differ, and names them.
enum ModelAgreement {
    /// One ready pod and the digest it reported (nil: not read yet).
    struct Pod: Sendable, Equatable {
        var name: String
        var digest: String?
    }

    struct Verdict: Sendable, Equatable {
        var status: ConditionStatus
        var reason: String
        var message: String
    }

    static func verdict(_ pods: [Pod]) -> Verdict {
        var byDigest: [String: [String]] = [:]
        for pod in pods { if let digest = pod.digest { byDigest[digest, default: []].append(pod.name) } }
        let unread = pods.filter { $0.digest == nil }.count
        let note = unread == 0 ? "" : "; \(unread) not read yet"
        switch byDigest.count {
        case 0:
            return Verdict(status: .unknown, reason: "NotRead",
                           message: pods.isEmpty ? "no ready pod" : "no ready pod's model has been read yet (pods are read at each load scrape)")
        case 1:
            let (digest, names) = byDigest.first!
            return Verdict(status: .true, reason: "OneModel", message: "\(names.count) ready pod\(names.count == 1 ? " serves" : "s serve") model \(short(digest))\(note)")
        default:
            // Largest group first, then by digest, so the message is stable between reconciles.
            let groups = byDigest.sorted { ($0.value.count, $1.key) > ($1.value.count, $0.key) }
            let parts = groups.map { digest, names in
                let sorted = names.sorted()
                let listed = sorted.prefix(3).joined(separator: ", ") + (sorted.count > 3 ? ", …" : "")
                return "\(short(digest)) (\(names.count) pod\(names.count == 1 ? "" : "s"): \(listed))"
            }
            return Verdict(status: .false, reason: "MixedModels",
                           message: "ready pods serve \(groups.count) different checkpoints: \(parts.joined(separator: "; "))\(note); "
                               + "a worker uses only the pods of its own model")
        }
    }

    /// The first 12 hex digits, enough to tell checkpoints apart in a message.
    static func short(_ digest: String) -> String { digest.count > 12 ? String(digest.prefix(12)) + "…" : digest }
}
