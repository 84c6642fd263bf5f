import Foundation

/// The server side of the data plane, which an expert pod runs around its `ExpertComputer`.
///
/// Every client connects over TCP and handshakes there (pool token, version, the backend it
/// wants). A `tcp` client then sends its requests on that connection. A `shm` client gets a slot
/// in the server's shared slot region; a `verbs` client gets a slot in the same region,
/// registered with the RDMA device, and a queue pair connected to its own registered copy. For
/// both, the connection stays open as the control channel: GOAWAY travels on it, and its closing
/// frees the slot. One thread per connection does its TCP I/O; one `ServingEngine` thread
/// batches the requests of all clients and computes them.
///
/// `drain(timeout:)` sends GOAWAY to every client, refuses new ones, keeps answering what is sent
/// until the clients have moved away (or the timeout passes); `stop()` then closes everything.
public final class DataPlaneServer: @unchecked Sendable {
    /// Settings, with defaults for one host.
    public struct Configuration: Sendable {
        /// Address to listen on; port 0 picks a free port (see `port`).
        public var host = "127.0.0.1"
        public var port = 0
        /// The pool's shared secret; handshakes with another token are refused.
        public var poolToken: [UInt8]
        /// This server's id, sent in handshake replies.
        public var serverID: UInt64
        /// The digest of the model whose experts it serves, sent in handshake replies (empty:
        /// synthetic experts, no model).
        public var modelDigest: [UInt8] = []
        /// Offer shared-memory slots to clients that ask for them.
        public var offerShm = true
        /// Offer RDMA slots to clients that ask for them. Needs an RDMA device: without one the
        /// server does not start, and says why.
        public var offerVerbs = false
        /// Which RDMA device, port and GID entry to use with `offerVerbs`.
        public var verbs = VerbsContext.Options()
        /// Slots in the shared region: the most `shm` and `verbs` clients at once (others get `tcp`).
        public var slots = 32
        /// Largest request and largest batch, in tokens; most expert slots per token. They size
        /// each slot and bound every buffer a client can make the server allocate.
        public var maxBatchTokens = 512
        public var maxSlotsPerToken = 8
        /// How long the engine waits for more requests once the first of a batch arrived. The
        /// default, zero, computes what is ready at once: under load, requests that arrive during
        /// one batch's computation form the next batch (continuous batching) without adding
        /// latency when the server is idle.
        public var maxWait: Duration = .zero
        /// Most clients connected at once; more are refused until some leave.
        public var maxClients = 1024
        /// Directory of the shared slot region (`/dev/shm` is memory-backed on Linux).
        public var regionDirectory = "/dev/shm"
        /// How long a new connection has to complete its whole handshake (one deadline from
        /// accept to the handshake's last byte, not a per-read timeout).
        public var handshakeTimeout: Duration = .seconds(3)
        /// Connections that have not authenticated yet, at most, in all and per source address;
        /// beyond these a new connection is closed at once (they hold no thread either way).
        public var maxPendingHandshakes = 256
        public var maxPendingHandshakesPerAddress = 32
        /// How long a send to a client may block before the client is dropped.
        public var sendTimeout: Duration = .seconds(10)
        /// How long a drain lets clients move away after GOAWAY before it closes the connections
        /// still open with no request in progress (a client that is idle reads GOAWAY only at
        /// its next request; one that sends anything after the close fails over, losing nothing).
        public var drainSettle: Duration = .seconds(2)
        public var limits = WireLimits()

        public init(poolToken: [UInt8], serverID: UInt64) {
            self.poolToken = poolToken
            self.serverID = serverID
        }
    }

    public let configuration: Configuration
    public let computer: ExpertComputer
    let hosted: Set<HostedExpert>
    private let listener: Socket
    /// The slot region, when `offerShm` or `offerVerbs`; its slots belong to the engine thread.
    let slots: SlotServer?
    /// The RDMA device and, per slot, its memory registration (a client's rkey opens its own slot
    /// only), when `offerVerbs`.
    let verbs: (context: VerbsContext, memories: [VerbsMemory])?
    let engine: ServingEngine
    /// Largest request frame this server takes: the read limit once a client is accepted.
    let maxRequestFrame: Int

    let state = NSLock()
    var sessions: [ObjectIdentifier: ClientSession] = [:]
    /// Every connection accepted and not yet closed, admitted or not (stop shuts them all down).
    var connections: [ObjectIdentifier: Socket] = [:]
    /// Free slots with their current epochs.
    var freeSlots: [(slot: Int, epoch: UInt16)] = []
    /// Slots being reset for their next client.
    var recycling = 0
    var verbsConnections: [Int: VerbsConnection] = [:]
    var draining = false
    var running = true
    private var servedCount = 0
    private var failedCount = 0
    /// Counts a report and passes it to the observer.
    private var record: (ServingReport) -> Void = { _ in }
    private let threads = DispatchGroup()
    private var gate: HandshakeGate!
    private var refusals: [HandshakeRefusal: Int] = [:]
    private let refusalObserver: (@Sendable (HandshakeRefusal) -> Void)?

    /// Binds the listener, creates the slot region (removing any that a killed server of this id
    /// left behind), opens the RDMA device with `offerVerbs`; `start()` begins serving.
    /// - Parameters:
    ///   - observer: called on the engine thread after every batch (for metrics).
    ///   - refusalObserver: called for every connection turned away before it became a client.
    public init(computer: ExpertComputer, configuration: Configuration, observer: (@Sendable (ServingReport) -> Void)? = nil,
                refusalObserver: (@Sendable (HandshakeRefusal) -> Void)? = nil) throws {
        try PoolToken.validate(configuration.poolToken, source: "the server's configuration")
        self.refusalObserver = refusalObserver
        self.computer = computer
        self.configuration = configuration
        hosted = Set(computer.experts)
        precondition(!hosted.isEmpty, "a data-plane server hosts at least one expert")
        let largest = RequestHeader(sequence: 0, layer: 0, dtype: computer.dtype, slotsPerToken: configuration.maxSlotsPerToken,
                                    tokens: configuration.maxBatchTokens, hidden: computer.hidden)
        maxRequestFrame = largest.frameSize
        listener = try Socket.listen(host: configuration.host, port: configuration.port)
        var slots: SlotServer?
        var verbs: (context: VerbsContext, memories: [VerbsMemory])?
        do {
            if configuration.offerShm || configuration.offerVerbs {
                Self.removeStaleRegions(in: configuration.regionDirectory, serverID: configuration.serverID)
                let layout = SlotLayout(slots: configuration.slots, requestCapacity: largest.frameSize,
                                        responseCapacity: max(ResponseHeader(sequence: 0, tokens: configuration.maxBatchTokens, hidden: computer.hidden).frameSize, 4096))
                let path = "\(configuration.regionDirectory)/eaas-slots-\(configuration.serverID)-\(getpid())-\(listener.localPort)"
                slots = try SlotServer(path: path, layout: layout)
            }
            if configuration.offerVerbs, let slots {
                let context = try VerbsContext(options: configuration.verbs)
                var memories: [VerbsMemory] = []
                do {
                    for slot in 0..<slots.layout.slots {
                        memories.append(try context.register(slots.base + slots.layout.requestFlag(slot), count: slots.layout.slotStride))
                    }
                } catch {
                    memories.forEach { $0.close() }
                    context.close()
                    throw error
                }
                verbs = (context, memories)
            }
        } catch {
            slots?.close()
            listener.close()
            throw error
        }
        self.slots = slots
        self.verbs = verbs
        freeSlots = (0..<(slots?.layout.slots ?? 0)).reversed().map { ($0, 0) }
        var check: (RequestView) throws -> Void = { _ in }
        var count: (ServingReport) -> Void = { _ in }
        engine = ServingEngine(computer: computer, slots: slots, maxBatchTokens: configuration.maxBatchTokens,
                               maxSlotsPerToken: configuration.maxSlotsPerToken, maxWait: configuration.maxWait,
                               limits: configuration.limits, check: { try check($0) }, report: { count($0) })
        check = { [unowned self] in try self.check($0) }
        record = { [unowned self] report in
            self.state.lock()
            for answer in report.answers {
                if answer.failure == nil { self.servedCount += 1 } else { self.failedCount += 1 }
            }
            self.state.unlock()
            observer?(report)
        }
        count = { [unowned self] in self.record($0) }
        gate = HandshakeGate(server: self, listener: listener,
                             limits: .init(maxPending: configuration.maxPendingHandshakes,
                                           maxPendingPerAddress: configuration.maxPendingHandshakesPerAddress,
                                           deadline: configuration.handshakeTimeout),
                             wireLimits: configuration.limits)
    }

    /// Counts a connection turned away before it became a client.
    func noteHandshakeRefusal(_ reason: HandshakeRefusal) {
        state.lock()
        refusals[reason, default: 0] += 1
        state.unlock()
        refusalObserver?(reason)
    }

    /// Connections turned away before they became clients, per reason, since the start.
    public var handshakeRefusals: [HandshakeRefusal: Int] { state.lock(); defer { state.unlock() }; return refusals }

    /// Counts a request refused before it reached the engine (bad frame, shape, experts).
    func noteRefused(_ code: WireErrorCode, arrived: ContinuousClock.Instant) {
        record(ServingReport(requests: 0, tokens: 0, busy: .zero, answers: [(ContinuousClock.now - arrived, code)], queued: 0))
    }

    /// The port the server listens on.
    public var port: Int { listener.localPort }
    /// The shared slot region's path, when `shm` is offered.
    public var regionPath: String? { configuration.offerShm ? slots?.region?.path : nil }
    /// Requests answered so far (both backends), and requests answered with an error.
    public var served: Int { state.lock(); defer { state.unlock() }; return servedCount }
    public var failed: Int { state.lock(); defer { state.unlock() }; return failedCount }
    /// Clients connected now.
    public var clientCount: Int { state.lock(); defer { state.unlock() }; return sessions.count }
    /// Whether the server is draining (it refuses new clients).
    public var isDraining: Bool { state.lock(); defer { state.unlock() }; return draining }

    /// Starts the accept and engine threads.
    public func start() {
        spawn { self.engine.run() }
        spawn { self.gate.run(isRunning: { self.state.withLock { self.running } }) }
    }

    func spawn(_ body: @escaping @Sendable () -> Void) {
        threads.enter()
        let thread = Thread { body(); self.threads.leave() }
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// Announces GOAWAY to every client, refuses new ones, and waits up to `timeout` for the
    /// clients to leave while still answering them; after `drainSettle` it closes the connections
    /// that are idle. Returns whether all of them left.
    @discardableResult
    public func drain(timeout: Duration, reason: String = "draining") -> Bool {
        state.lock()
        draining = true
        let current = Array(sessions.values)
        state.unlock()
        let goAway = FrameEncoder.encode(GoAway(deadlineMilliseconds: UInt32(clamping: timeout.components.seconds * 1000), reason: reason))
        for session in current { try? session.send(goAway) }
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        let settled = clock.now + min(timeout, configuration.drainSettle)
        var idleClosed = false
        while clock.now < deadline {
            if clientCount == 0 { return true }
            if !idleClosed, clock.now >= settled {
                idleClosed = true
                state.lock()
                let idle = sessions.values.filter { !$0.isBusy }
                state.unlock()
                for session in idle { session.socket.shutdown() }
            }
            Thread.sleep(forTimeInterval: 0.005)
        }
        return clientCount == 0
    }

    /// Stops serving: closes the listener and every connection, waits for the threads, removes
    /// the slot region. Safe to call more than once.
    public func stop() {
        state.lock()
        let wasRunning = running
        running = false
        let current = Array(connections.values)
        state.unlock()
        guard wasRunning else { return }
        gate.wake()
        listener.shutdown()
        for socket in current { socket.shutdown() }
        engine.stop()
        threads.wait()
        listener.close()
        for connection in verbsConnections.values { connection.close() }
        verbsConnections.removeAll()
        verbs?.memories.forEach { $0.close() }
        verbs?.context.close()
        slots?.close()
    }

    deinit { assert(!running, "DataPlaneServer was not stopped") }

    // MARK: Connections

    /// Takes a connection whose handshake the gate authenticated: a thread of its own answers
    /// the handshake and serves it, unless the server has `maxClients` clients already.
    func admit(_ socket: Socket, hello: Handshake) {
        state.lock()
        let open = running, full = connections.count >= configuration.maxClients
        if open, !full { connections[ObjectIdentifier(socket)] = socket }
        state.unlock()
        guard open, !full else {
            if open {
                noteHandshakeRefusal(.tooManyClients)
                let refusal = FrameEncoder.encode(ErrorFrame(sequence: 0, code: .overloaded, message: "server has \(configuration.maxClients) clients already"))
                try? refusal.withUnsafeBytes { try socket.writeAll($0) }
            }
            socket.close()
            return
        }
        spawn { ClientSession(server: self, socket: socket, hello: hello).run() }
    }

    /// Returns a departed client's slot: the engine resets it (a new epoch) before it is handed out.
    func recycle(slot: Int) {
        state.lock()
        recycling += 1
        let connection = verbsConnections.removeValue(forKey: slot)
        state.unlock()
        // The queue pair goes first, so that nothing the client still sends lands after the reset.
        connection?.close()
        engine.reset(slot: slot, peer: nil) { [unowned self] epoch in
            self.state.lock()
            self.freeSlots.append((slot, epoch))
            self.recycling -= 1
            self.state.unlock()
        }
    }

    // MARK: Requests

    /// The request's shape, dtype, size and experts against what this server takes.
    func check(_ view: RequestView) throws {
        let header = view.header
        guard header.hidden == computer.hidden, header.dtype == computer.dtype else {
            throw ComputeFailure(.shapeMismatch, "request has hidden \(header.hidden) of \(header.dtype); this server takes hidden \(computer.hidden) of \(computer.dtype)")
        }
        guard header.tokens <= configuration.maxBatchTokens else {
            throw ComputeFailure(.tooManyTokens, "request has \(header.tokens) tokens; this server takes at most \(configuration.maxBatchTokens)")
        }
        guard header.slotsPerToken <= configuration.maxSlotsPerToken else {
            throw ComputeFailure(.tooManyTokens, "request has \(header.slotsPerToken) expert slots per token; this server takes at most \(configuration.maxSlotsPerToken)")
        }
        for t in 0..<header.tokens {
            for s in 0..<header.slotsPerToken {
                guard let id = view.expert(token: t, slot: s) else { continue }
                guard hosted.contains(HostedExpert(layer: header.layer, expert: id)) else {
                    throw ComputeFailure(.unknownExpert, "expert \(id) of layer \(header.layer) is not hosted by server \(configuration.serverID)")
                }
            }
        }
    }

    /// Removes the slot regions that process `pid` created, once it is gone (a SIGKILLed server
    /// cannot remove its own): what a runtime or a test does after one of its servers died.
    /// Returns how many were removed.
    @discardableResult
    public static func removeRegions(leftBy pid: Int32, in directory: String = "/dev/shm") -> Int {
        guard kill(pid, 0) != 0, errno == ESRCH, let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return 0 }
        var removed = 0
        for name in names where name.hasPrefix("eaas-slots-") {
            // eaas-slots-<server id>-<pid>-<port>
            let parts = name.dropFirst("eaas-slots-".count).split(separator: "-")
            if parts.count == 3, Int32(parts[1]) == pid, unlink("\(directory)/\(name)") == 0 { removed += 1 }
        }
        return removed
    }

    /// Removes slot regions of this server id whose process is gone (a SIGKILL leaves them).
    static func removeStaleRegions(in directory: String, serverID: UInt64) {
        let prefix = "eaas-slots-\(serverID)-"
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return }
        for name in names where name.hasPrefix(prefix) {
            let rest = name.dropFirst(prefix.count).split(separator: "-")
            guard rest.count >= 2, let pid = Int32(rest[0]), pid != getpid() else { continue }
            if kill(pid, 0) != 0, errno == ESRCH { unlink("\(directory)/\(name)") }
        }
    }
}
