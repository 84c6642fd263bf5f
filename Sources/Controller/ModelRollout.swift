/// Make-before-break for a change of `spec.model`, as a pure step over what the reconciler saw.
///
/// A Deployment's rolling update would replace each old-model pod as soon as a new one is ready,
/// while the attention workers of the old model (which use only pods of their own checkpoint:
/// the handshake carries its digest) are still sending to it. So a new revision gets Deployments
/// of its own (`<pool>-<shard>-m<n>`) beside the old ones, which are left exactly as they were.
/// An old revision goes once the new one serves (every shard has a ready pod that has been
/// scraped) and none of its ready pods has a worker connected (`eaas_clients`): the workers have
/// moved. Until then it keeps serving whoever still uses it; nothing decides for them by a timer.
enum ModelRollout {
    /// One pod of a retiring revision as the reconciler saw it.
    struct PodUse: Sendable, Equatable {
        var ready: Bool
        /// `eaas_clients` from its last scrape; nil when not read yet.
        var clients: Int?
    }

    struct Outcome: Sendable {
        var status: ModelRolloutStatus
        /// Events to record, in order.
        var events: [(reason: String, message: String)]
        /// Revisions whose Deployments are to be removed now.
        var removed: [Int]
    }

    /// Older revisions kept at most: past this the oldest goes at once (and says how many
    /// workers it still had), so that editing spec.model again and again cannot pile up pods.
    static let maxRetiring = 2

    /// - Parameters:
    ///   - previous: `status.model` as published (nil: a pool seen for the first time).
    ///   - fingerprint: the hash of `spec.model` now; `path` its `path`.
    ///   - serving: the current revision's shards as the workers' plan lists them now (what a
    ///     change of model retires).
    ///   - newRevisionServing: every shard of the current revision has a ready, scraped pod.
    ///   - pods: each retiring revision's pods.
    ///   - now: the RFC 3339 time to stamp a change with.
    static func step(previous: ModelRolloutStatus?, fingerprint: String, path: String, serving: [RetiringShard],
                     newRevisionServing: Bool, pods: [Int: [PodUse]], now: String) -> Outcome {
        guard var status = previous, !status.fingerprint.isEmpty else {
            // First sight (or a status written before revisions were kept): what runs is revision
            // `previous?.revision ?? 0` of the model as it is.
            var status = previous ?? ModelRolloutStatus()
            status.path = path
            status.fingerprint = fingerprint
            status.reason = "revision \(status.revision) serves \(path)"
            return Outcome(status: status, events: [], removed: [])
        }
        var events: [(reason: String, message: String)] = []
        var removed: [Int] = []
        if status.fingerprint != fingerprint {
            if !serving.isEmpty { status.retiring.append(RetiringModel(revision: status.revision, path: status.path, shards: serving)) }
            let from = status.path
            status.revision += 1
            status.path = path
            status.fingerprint = fingerprint
            status.lastChangeTime = now
            events.append(("ModelChanged", "spec.model changed (\(from) → \(path)): revision \(status.revision) comes up beside revision \(status.revision - 1), "
                + "which keeps serving its workers until they have moved"))
            while status.retiring.count > maxRetiring {
                let dropped = status.retiring.removeFirst()
                removed.append(dropped.revision)
                events.append(("ModelRevisionDropped", "revision \(dropped.revision) (\(dropped.path)) removed with "
                    + (dropped.clients >= 0 ? "\(dropped.clients) workers" : "an unknown number of workers") + " still connected: at most \(maxRetiring) older revisions are kept"))
            }
            status.reason = "revision \(status.revision) coming up; " + Self.list(status.retiring) + " serving meanwhile"
            return Outcome(status: status, events: events, removed: removed)
        }

        var kept: [RetiringModel] = []
        for var old in status.retiring {
            let ready = (pods[old.revision] ?? []).filter(\.ready)
            let read = ready.allSatisfy { $0.clients != nil }
            old.clients = read ? ready.reduce(0) { $0 + ($1.clients ?? 0) } : -1
            if newRevisionServing && old.clients == 0 {
                removed.append(old.revision)
                events.append(("ModelRolledOut", "revision \(old.revision) (\(old.path)) removed: revision \(status.revision) serves and no worker is connected to its pods"))
            } else {
                kept.append(old)
            }
        }
        status.retiring = kept
        if kept.isEmpty {
            status.reason = "revision \(status.revision) serves \(status.path)"
        } else if !newRevisionServing {
            status.reason = "revision \(status.revision) coming up; " + Self.list(kept) + " serving meanwhile"
        } else {
            let waiting = kept.map { $0.clients >= 0 ? "\($0.clients) on revision \($0.revision)" : "revision \($0.revision)'s pods not all read yet" }
            status.reason = "revision \(status.revision) serves; waiting for workers to move (\(waiting.joined(separator: ", ")))"
        }
        return Outcome(status: status, events: events, removed: removed)
    }

    static func list(_ retiring: [RetiringModel]) -> String {
        retiring.count == 1 ? "revision \(retiring[0].revision)" : "revisions " + retiring.map { "\($0.revision)" }.joined(separator: ", ")
    }
}
