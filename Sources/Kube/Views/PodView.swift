import JSON

/// A Pod through the fields controllers read, each with the meaning the API gives its absence,
/// so that no caller spells a JSON path (and defaults silently when it is wrong).
public struct PodView: Sendable {
    public let object: KubeObject

    public init(_ object: KubeObject) { self.object = object }

    /// `status.phase`; a pod the kubelet has not reported on yet is Pending.
    public var phase: String { object.json[path: ["status", "phase"]]?.string ?? "Pending" }

    /// Not yet running (scheduled or not).
    public var isPending: Bool { phase == "Pending" }

    /// Succeeded or Failed: it runs nothing any more, and never will again.
    public var hasFinished: Bool { phase == "Succeeded" || phase == "Failed" }

    /// Being deleted (graceful termination under way).
    public var isTerminating: Bool { object.deletionTimestamp != nil }

    /// `status.podIP`, once the pod has one.
    public var podIP: String? { object.json[path: ["status", "podIP"]]?.string.flatMap { $0.isEmpty ? nil : $0 } }

    /// The pod's `Ready` condition is True (absent, False and Unknown are not).
    public var hasReadyCondition: Bool {
        object.json[path: ["status", "conditions"]]?.array?.contains { $0["type"]?.string == "Ready" && $0["status"]?.string == "True" } ?? false
    }

    /// Takes new work: Running, not terminating, and its Ready condition True (a terminating
    /// pod may still report Ready while it drains).
    public var isReady: Bool { phase == "Running" && !isTerminating && hasReadyCondition }

    /// The first container's `args` (empty when it has none).
    public var arguments: [String] { firstContainer?["args"]?.array?.compactMap(\.string) ?? [] }

    /// The value after `flag` in the first container's arguments (`--model`, say).
    public func argument(after flag: String) -> String? {
        let arguments = self.arguments
        guard let index = arguments.firstIndex(of: flag), index + 1 < arguments.count else { return nil }
        return arguments[index + 1]
    }

    /// The first container's port named `name` (`containerPort`).
    public func containerPort(named name: String) -> Int? {
        firstContainer?["ports"]?.array?.first { $0["name"]?.string == name }?["containerPort"]?.int
    }

    private var firstContainer: JSONValue? { object.json[path: ["spec", "containers"]]?.array?.first }
}
