#if canImport(Glibc)
import Glibc
#endif

/// Runs MoE-layer steps against expert servers over `tcp` or `shm` links, bypassing any controller: chooses a
/// replica per expert (`ReplicaChooser`), sends one request per server (`StepPlanner`), gathers
/// the partial sums and adds them per token in ascending expert order.
///
/// Failure handling: a connection error, an error frame saying the server is draining, or a
/// response later than the server's adaptive timeout marks that server down and re-plans its
/// tokens onto other replicas at once. A GOAWAY frame stops new work going to the server while
/// its in-flight answer is still taken. Requests are pure functions of their inputs, so a resend is
/// safe; a timed-out connection is closed, so a late answer can never be counted twice. When no
/// ready replica of an expert is left, the step waits up to `noReplicaWait` for the membership
/// to offer one, then fails with an error naming the expert.
///
/// One dispatcher per thread (the data-plane hot path stays on one thread).
public final class Dispatcher {
    /// Settings, with defaults for a loopback or datacenter network.
    public struct Configuration: Sendable {
        /// The pool's shared secret, sent in every handshake.
        public var poolToken: [UInt8]
        /// The digest of the model this client serves (MoE's `ModelDigest`); when set, a server
        /// whose handshake reply names another model is refused and never used.
        public var modelDigest: [UInt8]?
        /// This client's id in handshakes.
        public var clientID: UInt64
        /// The largest batch this client sends, announced in handshakes.
        public var maxBatchTokens: UInt32 = 4096
        /// The backend to ask servers for; a server that cannot offer it answers with `tcp`.
        /// `verbs` needs an RDMA device here: without one, steps fail with the reason.
        public var backend: BackendKind = .tcp
        /// Which RDMA device a `verbs` client uses.
        public var verbs = VerbsContext.Options()
        /// The request a `verbs` client's slot holds (larger ones go over TCP); it must be at
        /// least the server's slot size (the server's `maxBatchTokens`, `maxSlotsPerToken`).
        public var verbsSlotTokens = 512
        public var verbsSlotsPerToken = 8
        /// How long a step waits for a replica of an expert that none hosts right now.
        public var noReplicaWait: Duration = .seconds(5)
        /// The most one step may take, failovers included.
        public var stepDeadline: Duration = .seconds(30)
        /// How long a connection attempt may take.
        public var connectTimeout: Duration = .seconds(2)
        /// How long a server stays marked down before it is tried again while other replicas
        /// serve its experts. A step whose experts have no other replica tries a down server
        /// again much sooner: after `reviveFirst`, doubling per failed try up to `reviveAtMost`,
        /// jittered, so that a sole replica restarted on its address is used as soon as it is
        /// back rather than after `downFor`.
        public var downFor: Duration = .seconds(2)
        public var reviveFirst: Duration = .milliseconds(25)
        public var reviveAtMost: Duration = .milliseconds(500)
        /// Bounds of the per-server adaptive timeout.
        public var minimumTimeout: Duration = .milliseconds(50)
        public var maximumTimeout: Duration = .seconds(10)
        public var limits = WireLimits()
        /// Tokens of load a server already in a step may carry beyond another replica before the
        /// step contacts one more server (`ReplicaChooser.contactCost`). Spreading a step over
        /// servers pays where they have their own CPUs; where pods share this host's cores, a
        /// large value keeps each step on one pod.
        public var contactCost = 64

        public init(poolToken: [UInt8], clientID: UInt64) {
            self.poolToken = poolToken
            self.clientID = clientID
        }
    }

    /// Why a step failed.
    public enum StepError: Error, CustomStringConvertible, Equatable {
        /// No ready replica of `expert` appeared within `noReplicaWait`.
        case noReplica(HostedExpert, waited: Duration)
        /// A server refused the request itself (a client-side bug or a version skew), with its message.
        case refused(server: String, code: WireErrorCode, message: String)
        /// The step ran past `stepDeadline`; `lastFailures` says what went wrong with each server.
        case deadline(Duration, lastFailures: [String: String])
        /// The step's own input is not a routing the wire can carry.
        case invalidStep(String)
        /// The server serves experts of another checkpoint than this client's.
        case wrongModel(server: String, expected: String, served: String)

        public var description: String {
            switch self {
            case let .noReplica(expert, waited): "no ready replica hosts expert \(expert.expert) of layer \(expert.layer) (waited \(waited))"
            case let .refused(server, code, message): "server \(server) refused the request (\(code)): \(message)"
            case let .deadline(limit, failures):
                "step not finished within \(limit); " + failures.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: "; ")
            case let .invalidStep(reason): "invalid step: \(reason)"
            case let .wrongModel(server, expected, served):
                "server \(server) serves model \(served), not this client's model \(expected): its experts are not used"
            }
        }
    }

    public let configuration: Configuration
    private let membership: MembershipSource
    private var links: [String: ServerLink] = [:]
    /// The RDMA device, opened at the first step when `verbs` is asked for.
    private var verbsContext: VerbsContext?
    /// Servers that sent GOAWAY: their link closes once the answer in flight is in.
    private var draining: Set<String> = []
    private var downUntil: [String: ContinuousClock.Instant] = [:]
    /// Per down server: when a step with no other replica may try it again, and how many such
    /// tries have failed in a row.
    private var revive: [String: (at: ContinuousClock.Instant, tries: Int)] = [:]
    /// Per server id, kept across reconnects so that back-off after timeouts persists.
    private var timeouts: [String: AdaptiveTimeout] = [:]
    /// Servers marked down because an answer was late (not because the connection failed).
    private var suspects: Set<String> = []
    /// The last failure seen per server id, for error messages.
    private var lastFailure: [String: String] = [:]
    private var chooser: ReplicaChooser
    private var sequence: UInt64 = 0
    /// Partial sums of tokens answered by several servers, kept between steps for their capacity.
    private var combineScratch = PartialCombiner.Scratch()
    /// The step between `begin` and `complete`.
    private var current: StepInFlight?
    private let clock = ContinuousClock()
    /// Servers marked down since the dispatcher started, for observability and tests.
    public private(set) var failovers = 0
    /// Where the steps' time went, summed over every step since the dispatcher started.
    public private(set) var phases = StepPhaseTimes()

    public init(membership: MembershipSource, configuration: Configuration) {
        self.membership = membership
        self.configuration = configuration
        chooser = ReplicaChooser(contactCost: configuration.contactCost)
    }

    /// The backend the link to server `id` runs over, while one is open.
    public func backend(of id: String) -> BackendKind? { links[id]?.backend }

    /// Closes every connection.
    public func close() {
        for link in links.values { link.close() }
        links.removeAll()
        verbsContext?.close()
        verbsContext = nil
    }

    deinit {
        for link in links.values { link.close() }
        verbsContext?.close()
    }

    /// Runs one step.
    /// - Parameters:
    ///   - ids, weights: `[tokens, topK]` routing.
    ///   - states: `[tokens, hidden]` hidden states in `dtype`.
    /// - Returns: `[tokens, hidden]` combined gate-weighted sums.
    public func step(
        layer: UInt16, tokens: Int, topK: Int, ids: [Int32], weights: [Float],
        states: UnsafeRawBufferPointer, hidden: Int, dtype: WireDType
    ) throws -> [Float] {
        var out = [Float](repeating: 0, count: tokens * hidden)
        try out.withUnsafeMutableBufferPointer { output in
            try step(layer: layer, tokens: tokens, topK: topK, ids: ids, weights: weights, states: states, hidden: hidden, dtype: dtype, into: output)
        }
        return out
    }

    /// Runs one step and writes its `[tokens, hidden]` combined gate-weighted sums into `output`.
    ///
    /// A token answered by one server (every token, when a step goes to one pod) has its row
    /// copied from the answer straight into `output`; only tokens whose pairs were answered by
    /// several servers keep their partial sums aside, to add them in ascending order of their
    /// first expert (the canonical combine order) once all are in.
    public func step(
        layer: UInt16, tokens: Int, topK: Int, ids: [Int32], weights: [Float],
        states: UnsafeRawBufferPointer, hidden: Int, dtype: WireDType, into output: UnsafeMutableBufferPointer<Float>
    ) throws {
        try begin(layer: layer, tokens: tokens, topK: topK, ids: ids, weights: weights, states: states, hidden: hidden, dtype: dtype, into: output)
        try complete()
    }

    /// Starts a step: sends its requests and returns without waiting for the answers, so that the
    /// caller can compute meanwhile (the worker's ping-pong micro-batches); `complete()` then
    /// gathers them into `output`. `states` and `output` must stay valid and untouched until
    /// `complete()` returns (a failover resends from `states`). One step at a time per dispatcher.
    public func begin(
        layer: UInt16, tokens: Int, topK: Int, ids: [Int32], weights: [Float],
        states: UnsafeRawBufferPointer, hidden: Int, dtype: WireDType, into output: UnsafeMutableBufferPointer<Float>
    ) throws {
        precondition(current == nil, "a step is already in flight on this dispatcher")
        precondition(states.count == tokens * hidden * dtype.byteSize, "states are not [tokens, hidden]")
        precondition(output.count >= tokens * hidden, "output is not [tokens, hidden]")
        guard ids.count == tokens * topK, weights.count == tokens * topK else {
            throw StepError.invalidStep("ids and weights must be [\(tokens), \(topK)] (got \(ids.count) and \(weights.count))")
        }
        if let bad = ids.first(where: { $0 < 0 || $0 >= Int32(RequestHeader.emptySlot) }) {
            throw StepError.invalidStep("expert id \(bad) is outside 0..<\(RequestHeader.emptySlot)")
        }
        // A token no server could take is this client's error, said as such (not a missing replica).
        try PoolToken.validate(configuration.poolToken, source: "the dispatcher's configuration")
        if configuration.backend == .verbs, verbsContext == nil { verbsContext = try VerbsContext(options: configuration.verbs) }
        let started = clock.now
        current = StepInFlight(layer: layer, topK: topK, ids: ids, weights: weights, states: states, hidden: hidden, dtype: dtype,
                               pending: [Bool](repeating: true, count: tokens * topK),
                               combiner: PartialCombiner(tokens: tokens, hidden: hidden, output: output.baseAddress!, scratch: combineScratch),
                               started: started)
        do {
            try advance(untilSent: true)
        } catch {
            end()
            throw error
        }
        phases.dispatch += clock.now - started
    }

    /// Waits for the answers of the step `begin` started, failing over where a server does not
    /// answer, and combines them into its output.
    public func complete() throws {
        precondition(current != nil, "no step in flight")
        defer { end() }
        try advance(untilSent: false)
        let combining = clock.now
        current!.combiner.finish()
        phases.combine += clock.now - combining
        phases.steps += 1
    }

    /// Drops the step in flight, if any, without waiting for it (the caller's other work failed):
    /// the connections with answers due are closed, so no late answer reaches a later step.
    public func abandonStep() {
        guard let step = current else { return }
        abandon(step.inFlight.map(\.server.id))
        end()
    }

    /// Leaves the step in flight behind (done or failed), keeping the combiner's scratch.
    private func end() {
        if let step = current { combineScratch = step.combiner.scratch }
        current = nil
    }

    /// Runs the step in flight: receives the answers sent for, and plans and sends the pairs still
    /// unanswered (all of them, the first time) until every pair is answered; with `untilSent`,
    /// returns as soon as requests are out instead of waiting for them.
    private func advance(untilSent: Bool) throws {
        var mark = clock.now
        while true {
            if !current!.inFlight.isEmpty {
                if untilSent { return }
                try receiveInFlight()
                mark = clock.now
            }
            let remaining = current!.pending.indices.filter { current!.pending[$0] }
            if remaining.isEmpty { return }
            let (layer, topK, hidden, dtype, states, started) = (current!.layer, current!.topK, current!.hidden, current!.dtype, current!.states, current!.started)
            guard clock.now - started < configuration.stepDeadline else {
                throw StepError.deadline(configuration.stepDeadline, lastFailures: lastFailure)
            }
            let view = currentView()
            let subIDs = remaining.map { current!.ids[$0] }
            let demand = StepPlanner.demand(layer: layer, ids: subIDs)
            let choice: [HostedExpert: Int]
            do {
                choice = try chooser.choose(demand, view: view, outstanding: [])
            } catch let missing as NoReplica {
                if !suspects.isEmpty {
                    // The replicas left were only slow: try them again before waiting.
                    for id in suspects { downUntil[id] = nil }
                    suspects.removeAll()
                    continue
                }
                let waited = clock.now - started
                guard waited < configuration.noReplicaWait else { throw StepError.noReplica(missing.expert, waited: waited) }
                if reviveDownReplicas(of: missing.expert) { continue }
                try? sleep(.milliseconds(10))
                continue
            }
            // Plan the remaining pairs as one-slot-per-pair rows, grouped per token by the planner.
            let pairTokens = remaining.map { $0 / topK }
            let batches = StepPlanner.planPairs(layer: layer, pairTokens: pairTokens, ids: subIDs,
                                                weights: remaining.map { current!.weights[$0] }, choice: choice)
            current!.view = view
            for batch in batches {
                let server = view.servers[batch.server]
                let pairs = batch.pairIndices.map { remaining[$0] }
                do {
                    let link = try self.link(to: server, hidden: hidden, dtype: dtype)
                    sequence += 1
                    try send(batch, sequence: sequence, layer: layer, states: states, hidden: hidden, dtype: dtype, over: link)
                    current!.inFlight.append(.init(server: server, batch: batch, sequence: sequence, sent: clock.now, pairs: pairs))
                } catch let refusal as StepError {
                    abandon(current!.inFlight.map(\.server.id))
                    throw refusal
                } catch {
                    markDown(server.id, because: error)
                }
            }
            if !untilSent { phases.dispatch += clock.now - mark }  // choosing, planning and sending (begin counts its own)
        }
    }

    /// Receives every answer in flight, combining each as it comes; a server that fails or is late
    /// is marked down and its pairs stay pending for the next round.
    private func receiveInFlight() throws {
        // Plain values only: a copy of the step would make the combiner copy its buffers on write.
        let (flights, view, layer, hidden, started) = (current!.inFlight, current!.view, current!.layer, current!.hidden, current!.started)
        current!.inFlight.removeAll()
        for (index, flight) in flights.enumerated() {
            guard let link = links[flight.server.id] else { continue }
            // A timeout moves work to another replica; where there is none, giving up on a
            // slow server only makes the step wait longer, so it keeps waiting (until the
            // step's deadline) with the timeout doubled.
            let serverIndex = view.servers.firstIndex { $0.id == flight.server.id }
            let hasAlternative = flight.batch.ids.allSatisfy { id in
                id == RequestHeader.emptySlot || view.replicas(of: HostedExpert(layer: layer, expert: id)).contains { $0 != serverIndex }
            }
            let waiting = clock.now
            do {
                let response = try receive(sequence: flight.sequence, tokens: flight.batch.tokens.count, pairs: flight.pairs.count, hidden: hidden,
                                           from: link, server: flight.server, patient: !hasAlternative, stepStarted: started, sent: flight.sent)
                timeouts[flight.server.id, default: newTimeout()].record(clock.now - flight.sent, pairs: flight.pairs.count)
                revive[flight.server.id] = nil
                let received = clock.now
                phases.wait += received - waiting
                // The answer points into the link's buffers: taken in before anything else is received.
                current!.combiner.take(response.sums, tokens: flight.batch.tokens, firstExperts: flight.batch.firstExpert)
                phases.copy += clock.now - received
                for pair in flight.pairs { current!.pending[pair] = false }
                if draining.remove(flight.server.id) != nil { links.removeValue(forKey: flight.server.id)?.close() }
            } catch let error as StepError {
                // Answers still due on the other connections would confuse the next step.
                abandon(flights[(index + 1)...].map(\.server.id))
                throw error
            } catch {
                phases.wait += clock.now - waiting
                timeouts[flight.server.id, default: newTimeout()].recordTimeout()
                markDown(flight.server.id, because: error)
            }
        }
    }

    /// The membership with the servers marked down taken out of service. With none down (the
    /// steady state) it is the source's own view, not a copy: rebuilding the view's replica
    /// index for every expert on every MoE layer call cost about 0.1 ms of each batch-1 step.
    private func currentView() -> MembershipView {
        let now = clock.now
        if !downUntil.isEmpty { downUntil = downUntil.filter { $0.value > now } }
        guard !downUntil.isEmpty else { return membership.current() }
        let servers = membership.current().servers.map { server -> ServerInfo in
            var s = server
            if downUntil[server.id] != nil { s.ready = false }
            return s
        }
        return MembershipView(servers: servers)
    }

    private func markDown(_ id: String, because error: Error) {
        // A server that was only slow is a suspect: when no other replica is left, it is tried
        // again at once rather than waited out (a dead one fails its connection instead).
        if case TransportError.timedOut = error { suspects.insert(id) } else { suspects.remove(id) }
        failovers += 1
        lastFailure[id] = "\(error)"
        downUntil[id] = clock.now + configuration.downFor
        links.removeValue(forKey: id)?.close()
        draining.remove(id)
    }

    /// Takes the down mark off the servers of `expert` whose next try is due (the step has no
    /// other replica of it); true if any was. Each failed try doubles the pause before the next,
    /// from `reviveFirst` to `reviveAtMost`, with ±20 % jitter so that many clients do not try
    /// in lockstep.
    private func reviveDownReplicas(of expert: HostedExpert) -> Bool {
        let now = clock.now
        var revived = false
        for server in membership.current().servers where server.ready && downUntil[server.id] != nil && server.experts.contains(expert) {
            let state = revive[server.id] ?? (now, 0)
            guard now >= state.at else { continue }
            let pause = min(configuration.reviveAtMost, configuration.reviveFirst * (1 << min(state.tries, 20)))
            revive[server.id] = (now + pause * Double.random(in: 0.8...1.2), state.tries + 1)
            downUntil[server.id] = nil
            revived = true
        }
        return revived
    }

    /// Closes connections whose answers will not be read, so they cannot reach a later step.
    private func abandon(_ ids: [String]) {
        for id in ids {
            links.removeValue(forKey: id)?.close()
            draining.remove(id)
        }
    }

    private func newTimeout() -> AdaptiveTimeout {
        AdaptiveTimeout(minimum: configuration.minimumTimeout, maximum: configuration.maximumTimeout)
    }

    private func link(to server: ServerInfo, hidden: Int, dtype: WireDType) throws -> ServerLink {
        if let link = links[server.id] { return link }
        let link = try ServerLinks.open(to: server, configuration: configuration, verbs: verbsContext, hidden: hidden, dtype: dtype)
        links[server.id] = link
        return link
    }

    /// Sends the batch's request; its state rows go from `states` as they are (see `OutgoingRequest`).
    private func send(_ batch: ServerBatch, sequence: UInt64, layer: UInt16, states: UnsafeRawBufferPointer, hidden: Int, dtype: WireDType, over link: ServerLink) throws {
        let header = RequestHeader(sequence: sequence, layer: layer, dtype: dtype, slotsPerToken: batch.slotsPerToken, tokens: batch.tokens.count, hidden: hidden)
        try batch.ids.withUnsafeBufferPointer { ids in
            try batch.weights.withUnsafeBufferPointer { weights in
                try batch.tokens.withUnsafeBufferPointer { rows in
                    try link.send(OutgoingRequest(header: header, ids: ids, weights: weights, states: states, rows: rows))
                }
            }
        }
    }

    /// The response to `sequence`; GOAWAY frames on the way mark the server draining. Throws on
    /// timeout, connection loss, a wrong answer, or an error frame.
    private func receive(sequence: UInt64, tokens: Int, pairs: Int, hidden: Int, from link: ServerLink, server: ServerInfo,
                         patient: Bool, stepStarted: ContinuousClock.Instant, sent: ContinuousClock.Instant) throws -> ResponseView {
        // Answers from this server usually take `typical` (smoothed): the first three quarters of
        // that are slept through, then short sleeps growing from there, so that an answer on time
        // is seen within tens of microseconds and an early one within a quarter of the typical.
        let likelyBy = sent + (timeouts[server.id]?.typical(pairs: pairs) ?? .zero) * 3 / 4
        var timeout = timeouts[server.id, default: newTimeout()].current(pairs: pairs)
        var deadline = clock.now + timeout
        while true {
            guard let frame = try link.receive(sequence: sequence, until: deadline, likelyBy: likelyBy) else {
                guard patient, clock.now - stepStarted < configuration.stepDeadline else {
                    throw TransportError.timedOut(sequence: sequence, after: timeout)
                }
                timeouts[server.id, default: newTimeout()].recordTimeout()
                timeout = timeouts[server.id, default: newTimeout()].current(pairs: pairs)
                deadline = min(clock.now + timeout, stepStarted + configuration.stepDeadline)
                continue
            }
            switch frame {
            case .response(let response) where response.header.sequence < sequence:
                continue  // a late answer to an earlier request on this connection: already settled
            case .response(let response):
                guard response.header.sequence == sequence else {
                    throw WireError.invalid(frame: "response", field: "sequence", reason: "is \(response.header.sequence), ahead of the awaited \(sequence)")
                }
                guard response.header.tokens == tokens, response.header.hidden == hidden else {
                    throw WireError.invalid(frame: "response", field: "tokens", reason: "answers \(response.header.tokens) tokens × hidden \(response.header.hidden); expected \(tokens) × \(hidden)")
                }
                return response
            case .goAway:
                // Draining: no new work goes there, but this answer is still coming.
                downUntil[server.id] = clock.now + configuration.downFor
                draining.insert(server.id)
            case .error(let error) where [.draining, .overloaded, .unknownExpert].contains(error.code):
                // Not this request's fault: the server is leaving, full, or no longer hosts the
                // expert (membership is stale). Fail over.
                throw TransportError.unreachable(address: server.address, reason: "\(error.code): \(error.message)")
            case .error(let error):
                throw StepError.refused(server: server.id, code: error.code, message: error.message)
            default:
                throw WireError.invalid(frame: "response", field: "kind", reason: "unexpected frame while waiting for a response")
            }
        }
    }

    private func sleep(_ duration: Duration) throws {
        var request = timespec(tv_sec: Int(duration.components.seconds), tv_nsec: Int(duration.components.attoseconds / 1_000_000_000))
        nanosleep(&request, nil)
    }
}

/// A dispatcher's step between `begin` and `complete`: its routing, where its states are, which
/// (token, slot) pairs are still unanswered, and the requests out.
private struct StepInFlight {
    struct Flight {
        let server: ServerInfo
        let batch: ServerBatch
        let sequence: UInt64
        let sent: ContinuousClock.Instant
        /// The step's (token, slot) pairs this request carries.
        let pairs: [Int]
    }

    let layer: UInt16
    let topK: Int
    let ids: [Int32]
    let weights: [Float]
    let states: UnsafeRawBufferPointer
    let hidden: Int
    let dtype: WireDType
    var pending: [Bool]
    var combiner: PartialCombiner
    let started: ContinuousClock.Instant
    /// The membership the requests out were planned against.
    var view = MembershipView(servers: [])
    var inFlight: [Flight] = []
}
