import Kube
import Transport

/// The EaaS operator: reconciles `ExpertPool` resources into one replica set per expert shard and
/// scales each from per-expert load. So far it holds the autoscaler's arithmetic
/// (`ReplicaCalculator`, `ShardAutoscaler`); the reconciler arrives with the controller issue.
public enum Controller {
    /// The API group of the `ExpertPool` custom resource.
    public static let apiGroup = "eaas.dev"
    /// The served version of `ExpertPool`.
    public static let apiVersion = "v1alpha1"
}
