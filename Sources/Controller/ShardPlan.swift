import MoE

/// The shards of a pool, resolved from its spec: each a name and the experts it serves.
public struct ShardPlan: Sendable, Equatable {
    public struct Shard: Sendable, Equatable {
        /// DNS label; the shard's Deployment is `<pool>-<name>`.
        public var name: String
        /// Expert indices, ascending; served in every MoE layer.
        public var experts: [Int]
        public init(name: String, experts: [Int]) {
            self.name = name
            self.experts = experts
        }
        /// The experts as ranges (`0-3,8`), the form `eaas expert-pod --shard` takes.
        public var expertRanges: String { IntegerRanges.format(experts) }
    }

    public var shards: [Shard]

    public init(shards: [Shard]) { self.shards = shards }

    public func shard(named name: String) -> Shard? { shards.first { $0.name == name } }
}

/// A spec mistake the schema cannot catch (or an API server that does not run the CEL rules
/// did not): reported in the Degraded condition, and nothing running is changed.
public struct SpecProblem: Error, Equatable, Sendable, CustomStringConvertible {
    /// The condition reason: `InvalidReplicaBounds`, `InvalidShardPlan`, `SecretNotFound`, ….
    public var reason: String
    public var message: String
    public init(reason: String, message: String) {
        self.reason = reason
        self.message = message
    }
    public var description: String { "\(reason): \(message)" }
}

extension ExpertPoolSpec {
    /// The longest pool name whose Deployments' pods still get names (and hostnames) within 63
    /// characters: `<pool>-<shard>-<10 hash>-<5 random>`.
    static let maxDeploymentName = 46

    /// Resolves the shard plan and checks what the schema cannot: bounds in order, every expert
    /// in exactly one shard, unique shard names, names that fit. The first problem wins.
    public func plan(poolName: String) -> Result<ShardPlan, SpecProblem> {
        if replicas.min > replicas.max {
            return .failure(SpecProblem(reason: "InvalidReplicaBounds", message: "replicas.min (\(replicas.min)) exceeds replicas.max (\(replicas.max))"))
        }
        if transport.port == transport.metricsPort {
            return .failure(SpecProblem(reason: "InvalidTransport", message: "transport.port and transport.metricsPort are both \(transport.port)"))
        }
        if placement.mode == .loadAware && !autoscaling.enabled {
            return .failure(SpecProblem(reason: "InvalidPlacement", message: "placement.mode loadAware plans from scraped load; autoscaling.enabled is false"))
        }
        if placement.mode == .loadAware && autoscaling.metric != .tokensPerSecond {
            return .failure(SpecProblem(reason: "InvalidPlacement",
                                        message: "placement.mode loadAware plans from tokens per second; autoscaling.metric is \(autoscaling.metric.rawValue)"))
        }
        let count = model.experts
        var plan: [ShardPlan.Shard] = []
        switch (shards.expertsPerShard, shards.explicit) {
        case (.some, .some):
            return .failure(SpecProblem(reason: "InvalidShardPlan", message: "shards gives both expertsPerShard and explicit shards; give one"))
        case (let perShard, nil):
            let size = perShard ?? 1
            for (index, start) in stride(from: 0, to: count, by: size).enumerated() {
                plan.append(.init(name: "s\(index)", experts: Array(start..<min(start + size, count))))
            }
        case (nil, let explicit?):
            var owner: [Int: String] = [:]
            var names = Set<String>()
            for shard in explicit {
                guard names.insert(shard.name).inserted else {
                    return .failure(SpecProblem(reason: "InvalidShardPlan", message: "shard name '\(shard.name)' appears twice"))
                }
                for expert in shard.experts {
                    guard (0..<count).contains(expert) else {
                        return .failure(SpecProblem(reason: "InvalidShardPlan",
                                                    message: "shard '\(shard.name)' names expert \(expert), but the model has experts 0-\(count - 1)"))
                    }
                    if let first = owner[expert] {
                        return .failure(SpecProblem(reason: "InvalidShardPlan",
                                                    message: first == shard.name ? "shard '\(shard.name)' lists expert \(expert) twice"
                                                                                 : "expert \(expert) is in shards '\(first)' and '\(shard.name)'"))
                    }
                    owner[expert] = shard.name
                }
                plan.append(.init(name: shard.name, experts: shard.experts.sorted()))
            }
            let missing = (0..<count).filter { owner[$0] == nil }
            if !missing.isEmpty {
                return .failure(SpecProblem(reason: "InvalidShardPlan",
                                            message: "no shard serves expert\(missing.count == 1 ? "" : "s") \(IntegerRanges.format(missing))"))
            }
        }
        if let long = plan.first(where: { poolName.count + 1 + $0.name.count > Self.maxDeploymentName }) {
            return .failure(SpecProblem(reason: "NameTooLong",
                                        message: "Deployment name '\(poolName)-\(long.name)' is longer than \(Self.maxDeploymentName) characters; pod names would not fit"))
        }
        return .success(ShardPlan(shards: plan))
    }
}
