import Foundation
import JSON

/// `meta.k8s.io/v1` Table answers, as the API server makes them for custom resources from their
/// CRD's `additionalPrinterColumns` (Name first; `date` columns as ages), so `kubectl get` prints
/// the same columns as against a cluster.
enum PrinterTable {
    static func table(_ resource: ServedResource, objects: [JSONValue], metadata: JSONValue) -> JSONValue {
        var columns = resource.printerColumns
        if columns.isEmpty { columns = [.init(name: "Age", type: "date", jsonPath: ".metadata.creationTimestamp")] }
        var definitions: [JSONValue] = [["name": "Name", "type": "string", "format": "name", "description": "Name of the object", "priority": 0]]
        definitions += columns.map { ["name": .string($0.name), "type": .string($0.type), "format": "", "description": "", "priority": 0] }
        let rows: [JSONValue] = objects.map { object in
            var cells: [JSONValue] = [object[path: ["metadata", "name"]] ?? ""]
            for column in columns {
                let value = object[path: ServedResource.jsonPath(column.jsonPath)] ?? .null
                if column.type == "date", let text = value.string { cells.append(.string(age(since: text))) } else { cells.append(value) }
            }
            return ["cells": .array(cells),
                    "object": ["kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"] ?? [:]]]
        }
        return ["kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "columnDefinitions": .array(definitions), "rows": .array(rows)]
    }

    /// Kubernetes' short human durations: 45s, 5m, 3h, 2d.
    static func age(since timestamp: String) -> String {
        guard let date = ISO8601DateFormatter().date(from: timestamp) else { return "<unknown>" }
        let seconds = max(0, Int(Date().timeIntervalSince(date)))
        switch seconds {
        case ..<120: return "\(seconds)s"
        case ..<(120 * 60): return "\(seconds / 60)m"
        case ..<(48 * 3600): return "\(seconds / 3600)h"
        default: return "\(seconds / 86_400)d"
        }
    }
}
