import Foundation
import Testing
import Transport
@testable import ExpertPod

@Suite("Pod client gauge")
struct PodClientGaugeTests {
    @Test("a pod's /metrics says how many data-plane clients it has now (eaas_clients), 0 before any")
    func podExportsClients() throws {
        let metrics = PodMetrics(hosted: [HostedExpert(layer: 1, expert: 0)], modelDigest: "ab")
        #expect(metrics.text().split(separator: "\n").contains { $0.hasPrefix("eaas_clients 0") })
        let count = ClientCount()
        metrics.countClients { count.value }
        count.value = 4
        #expect(metrics.text().split(separator: "\n").contains { $0.hasPrefix("eaas_clients 4") }, "\(metrics.text())")
    }
}

private final class ClientCount: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    var value: Int {
        get { lock.withLock { count } }
        set { lock.withLock { count = newValue } }
    }
}
