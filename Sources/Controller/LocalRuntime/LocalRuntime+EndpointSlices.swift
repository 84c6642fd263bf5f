import Foundation
import JSON
import Kube

/// The EndpointSlice controller of the local runtime: one slice per Service listing its pods.
extension LocalRuntime {

    func syncEndpointSlice(_ service: KubeObject, pods: InformerStore) async throws {
        guard let selector = service.json[path: ["spec", "selector"]]?.object, !selector.isEmpty, let name = service.name else { return }
        let matching = pods.list().filter { pod in
            let view = PodView(pod)
            return !view.isTerminating && view.podIP != nil && !view.hasFinished && selector.allSatisfy { pod.labels[$0.key] == $0.value.string }
        }.sorted { ($0.name ?? "") < ($1.name ?? "") }
        let endpoints: [JSONValue] = matching.map { pod in
            let view = PodView(pod)
            let ready = view.isReady
            return [
                "addresses": [.string(view.podIP ?? "")],
                "conditions": ["ready": .bool(ready), "serving": .bool(ready), "terminating": false],
                "targetRef": ["kind": "Pod", "name": .string(pod.name ?? ""), "namespace": .string(pod.namespace ?? ""), "uid": .string(pod.uid ?? "")],
            ]
        }
        let ports: [JSONValue] = (service.json[path: ["spec", "ports"]]?.array ?? []).compactMap { port in
            var resolved = port["targetPort"]?.int ?? port["port"]?.int
            if let target = port["targetPort"]?.string, let pod = matching.first {
                resolved = PodView(pod).containerPort(named: target)
            }
            guard let resolved else { return nil }
            return ["name": port["name"] ?? "", "port": .int(resolved), "protocol": port["protocol"] ?? "TCP"]
        }
        let slice: JSONValue = [
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": ["name": .string("\(name)-local"), "namespace": .string(service.namespace ?? configuration.namespace),
                         "labels": ["kubernetes.io/service-name": .string(name), "endpointslice.kubernetes.io/managed-by": "eaas-local-runtime"],
                         "ownerReferences": [service.controllerReference()]],
            "addressType": "IPv4",
            "endpoints": .array(endpoints),
            "ports": .array(ports),
        ]
        let hash = PoolReconciler.hash(slice)
        guard lock.withLock({ appliedSlices[service.key] }) != hash else { return }
        _ = try await client.patch(.endpointSlices, "\(name)-local", namespace: service.namespace, .apply(slice, fieldManager: "eaas-local-runtime", force: true))
        lock.withLock { appliedSlices[service.key] = hash }
    }
}
