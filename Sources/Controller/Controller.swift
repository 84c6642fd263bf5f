import Kube
import Transport

/// The EaaS operator: reconciles `ExpertPool` resources into one Deployment per expert shard
/// (`PoolReconciler`, run by `ExpertPoolController` on Kube's `KubeController`), scales each from
/// per-expert load (`ReplicaCalculator`, `ShardAutoscaler`), places experts from measured load
/// (`PlacementPlanner`) and rolls out new groupings and checkpoints beside what serves.
public enum Controller {
    /// The API group of the `ExpertPool` custom resource.
    public static let apiGroup = "eaas.dev"
    /// The served version of `ExpertPool`.
    public static let apiVersion = "v1alpha1"
}
