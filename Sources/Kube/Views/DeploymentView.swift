import JSON

/// A Deployment's desired and observed replicas, each with the meaning the API gives its absence.
public struct DeploymentView: Sendable {
    public let object: KubeObject

    public init(_ object: KubeObject) { self.object = object }

    /// `spec.replicas` as written; nil when unset (the API server then defaults it to 1).
    public var specReplicas: Int? { object.json[path: ["spec", "replicas"]]?.int }

    /// `status`: what the Deployment controller last observed (zeros before its first report).
    public struct Observed: Sendable, Equatable {
        public var replicas = 0
        public var readyReplicas = 0
        public var updatedReplicas = 0
        public var availableReplicas = 0
        public var observedGeneration = 0
        public init() {}
    }

    public var observed: Observed {
        let status = object.json["status"]
        var observed = Observed()
        observed.replicas = status?["replicas"]?.int ?? 0
        observed.readyReplicas = status?["readyReplicas"]?.int ?? 0
        observed.updatedReplicas = status?["updatedReplicas"]?.int ?? 0
        observed.availableReplicas = status?["availableReplicas"]?.int ?? 0
        observed.observedGeneration = status?["observedGeneration"]?.int ?? 0
        return observed
    }

    /// The Deployment controller has seen the current spec (`observedGeneration` ≥ `generation`).
    public var hasObservedCurrentSpec: Bool { observed.observedGeneration >= (object.generation ?? 1) }

    /// Rolled out to `replicas`: the current spec observed, asking for `replicas`, and that many
    /// pods updated, existing and ready (what `kubectl rollout status` waits for).
    public func isRolledOut(to replicas: Int) -> Bool {
        let observed = self.observed
        return hasObservedCurrentSpec && specReplicas == replicas && observed.updatedReplicas >= replicas
            && observed.replicas == replicas && observed.readyReplicas >= replicas
    }
}
