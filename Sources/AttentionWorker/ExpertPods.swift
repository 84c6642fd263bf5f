import MoE
import Transport

/// Finding expert pods for a worker: a static list of addresses (each asked what it hosts) or a
/// membership file, and the wire format the pods expect.
public enum ExpertPods {
    /// A membership of the servers at `addresses` (`host:port`), each asked over a `tcp` handshake
    /// which experts it hosts. Every MoE expert of `config` must be hosted by one of them: a static
    /// list never changes, so a gap would only show as a failed step later.
    public static func staticMembership(addresses: [String], config: ModelConfig, dispatcher: Dispatcher.Configuration) throws -> StaticMembership {
        guard !addresses.isEmpty else { throw ModelLoadError("no expert server addresses given") }
        let servers = try addresses.map { address in
            do {
                let reply = try ServerLinks.probe(address: address, configuration: dispatcher)
                return ServerInfo(id: address, address: address, experts: reply.experts)
            } catch {
                throw ModelLoadError("expert server \(address): \(error)")
            }
        }
        let membership = StaticMembership(servers: servers)
        let missing = missingExperts(config: config, view: membership.view)
        guard missing.isEmpty else {
            throw ModelLoadError("no listed expert server hosts \(describe(missing)); the servers host \(membership.view.hostedExperts.count) of \(config.moeLayers.count * config.expertCount) experts")
        }
        return membership
    }

    /// The hidden-state dtype the ready servers of `view` expect (they must agree), checked against
    /// the model's hidden size; nil when none of them answers.
    public static func wireDType(of view: MembershipView, config: ModelConfig, dispatcher: Dispatcher.Configuration) throws -> WireDType? {
        var found: (WireDType, String)?
        for server in view.servers where server.ready {
            guard let reply = try? ServerLinks.probe(address: server.address, configuration: dispatcher) else { continue }
            guard Int(reply.hidden) == config.hiddenSize else {
                throw ModelLoadError("expert server \(server.id) serves hidden size \(reply.hidden), the model has \(config.hiddenSize): a different model")
            }
            if let (dtype, other) = found, dtype != reply.dtype {
                throw ModelLoadError("expert servers disagree on the wire dtype: \(other) expects \(dtype), \(server.id) \(reply.dtype)")
            }
            found = (reply.dtype, server.id)
        }
        return found?.0
    }

    /// MoE experts of `config` that no ready server of `view` hosts.
    public static func missingExperts(config: ModelConfig, view: MembershipView) -> [HostedExpert] {
        config.moeLayers.flatMap { layer in
            (0..<config.expertCount).map { HostedExpert(layer: UInt16(layer), expert: UInt16($0)) }
        }.filter { view.replicas(of: $0).isEmpty }
    }

    static func describe(_ experts: [HostedExpert]) -> String {
        let shown = experts.prefix(4).map { "expert \($0.expert) of layer \($0.layer)" }.joined(separator: ", ")
        return experts.count > 4 ? "\(shown) and \(experts.count - 4) more" : shown
    }
}
