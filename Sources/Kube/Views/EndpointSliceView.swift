import JSON

/// An EndpointSlice (discovery.k8s.io/v1) through the fields its readers use, with the API's
/// rules for what is absent: `ready` absent means ready, `serving` absent means as `ready`,
/// `terminating` absent means not terminating.
public struct EndpointSliceView: Sendable {
    public let object: KubeObject

    public init(_ object: KubeObject) { self.object = object }

    /// One endpoint: its addresses, conditions and the pod it stands for.
    public struct Endpoint: Sendable, Equatable {
        public var addresses: [String]
        public var ready: Bool
        public var serving: Bool
        public var terminating: Bool
        /// `targetRef.name` when the target is a Pod.
        public var podName: String?
    }

    /// The Service it belongs to (label `kubernetes.io/service-name`).
    public var serviceName: String? { object.labels["kubernetes.io/service-name"] }

    public var endpoints: [Endpoint] {
        (object.json["endpoints"]?.array ?? []).map { endpoint in
            let conditions = endpoint["conditions"]
            let ready = conditions?["ready"]?.bool ?? true
            let target = endpoint["targetRef"]
            return Endpoint(addresses: endpoint["addresses"]?.array?.compactMap(\.string) ?? [], ready: ready,
                            serving: conditions?["serving"]?.bool ?? ready, terminating: conditions?["terminating"]?.bool ?? false,
                            podName: (target?["kind"]?.string ?? "Pod") == "Pod" ? target?["name"]?.string : nil)
        }
    }

    /// The port named `name` (nil when the slice has none by that name).
    public func port(named name: String) -> Int? {
        object.json["ports"]?.array?.first { $0["name"]?.string == name }?["port"]?.int
    }
}
