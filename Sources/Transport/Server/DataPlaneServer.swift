import Foundation

/// The server side of the data plane, which an expert pod runs around its `ExpertComputer`.
///
/// Every client connects over TCP and handshakes there (pool token, version, the backend it
/// wants). A `tcp` client then sends its requests on that connection. A `shm` client is given a
/// slot in the server's shared slot region and the connection stays open as its control channel:
/// GOAWAY travels on it, and its closing frees the slot. A `verbs` client gets a slot in the same
/// region, registered with the RDMA device, and a queue pair connected to its own registered copy. One thread per connection does the TCP
/// I/O; one thread polls the slots; the computer is called by one thread at a time.
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
        /// Offer shared-memory slots to clients that ask for them.
        public var offerShm = true
        /// Offer RDMA slots to clients that ask for them. Needs an RDMA device: without one the
        /// server does not start, and says why.
        public var offerVerbs = false
        /// Which RDMA device, port and GID entry to use with `offerVerbs`.
        public var verbs = VerbsContext.Options()
        /// Slots in the shared region: the most `shm` clients at once (others get `tcp`).
        public var slots = 32
        /// Largest request, in tokens and in expert slots per token; sizes each slot.
        public var maxBatchTokens = 512
        public var maxSlotsPerToken = 8
        /// Directory of the shared slot region (`/dev/shm` is memory-backed on Linux).
        public var regionDirectory = "/dev/shm"
        /// How long a new connection has to complete its handshake.
        public var handshakeTimeout: Duration = .seconds(5)
        /// How long a send to a client may block before the client is dropped.
        public var sendTimeout: Duration = .seconds(10)
        public var limits = WireLimits()

        public init(poolToken: [UInt8], serverID: UInt64) {
            self.poolToken = poolToken
            self.serverID = serverID
        }
    }

    /// One client's TCP connection, and its slot when it uses `shm`.
    private final class Client: @unchecked Sendable {
        let connection: FrameConnection
        let writeLock = NSLock()
        var slot: Int?
        init(_ connection: FrameConnection) { self.connection = connection }

        func send(_ frame: [UInt8]) throws {
            writeLock.lock()
            defer { writeLock.unlock() }
            try connection.write(frame)
        }

        func send(_ frame: UnsafeRawBufferPointer) throws {
            writeLock.lock()
            defer { writeLock.unlock() }
            try connection.write(frame)
        }
    }

    public let configuration: Configuration
    private let computer: ExpertComputer
    private let hosted: Set<HostedExpert>
    private let listener: Socket
    /// The slot region, when `offerShm` or `offerVerbs`; touched only by the slot thread after start.
    private let slots: SlotServer?
    /// The RDMA device and the slot region registered with it, when `offerVerbs`.
    private let verbs: (context: VerbsContext, memory: VerbsMemory)?
    /// Queue pairs of `verbs` clients by slot, closed when the slot is recycled.
    private var verbsConnections: [Int: VerbsConnection] = [:]
    /// Peers to install on slots, applied by the slot thread (which owns the slots) before the
    /// handshake reply goes out.
    private var peersToInstall: [(slot: Int, peer: SlotPeer, done: DispatchSemaphore)] = []
    private let state = NSLock()
    private var clients: [ObjectIdentifier: Client] = [:]
    private var freeSlots: [Int]
    /// Slots of departed clients, to be reset by the slot thread before they are handed out again.
    private var slotsToRecycle: [Int] = []
    private var draining = false
    private var running = true
    private var servedCount = 0
    private let computeLock = NSLock()
    private let threads = DispatchGroup()

    /// Binds the listener (and creates the slot region); `start()` begins serving.
    public init(computer: ExpertComputer, configuration: Configuration) throws {
        self.computer = computer
        self.configuration = configuration
        hosted = Set(computer.experts)
        precondition(!hosted.isEmpty, "a data-plane server hosts at least one expert")
        listener = try Socket.listen(host: configuration.host, port: configuration.port)
        if configuration.offerShm || configuration.offerVerbs {
            let layout = SlotLayout(
                slots: configuration.slots,
                requestCapacity: RequestHeader(sequence: 0, layer: 0, dtype: computer.dtype, slotsPerToken: configuration.maxSlotsPerToken,
                                               tokens: configuration.maxBatchTokens, hidden: computer.hidden).frameSize,
                responseCapacity: max(ResponseHeader(sequence: 0, tokens: configuration.maxBatchTokens, hidden: computer.hidden).frameSize, 4096))
            let path = "\(configuration.regionDirectory)/eaas-slots-\(configuration.serverID)-\(getpid())-\(listener.localPort)"
            do {
                slots = try SlotServer(path: path, layout: layout)
            } catch {
                listener.close()
                throw error
            }
        } else {
            slots = nil
        }
        if configuration.offerVerbs, let slots {
            do {
                let context = try VerbsContext(options: configuration.verbs)
                do {
                    verbs = (context, try context.register(slots.base, count: slots.layout.totalSize))
                } catch {
                    context.close()
                    throw error
                }
            } catch {
                slots.close()
                listener.close()
                throw error
            }
        } else {
            verbs = nil
        }
        freeSlots = Array((0..<(slots?.layout.slots ?? 0)).reversed())
    }

    /// The port the server listens on.
    public var port: Int { listener.localPort }
    /// The shared slot region's path, when `shm` is offered.
    public var regionPath: String? { configuration.offerShm ? slots?.region?.path : nil }
    /// Requests answered so far (both backends).
    public var served: Int { state.lock(); defer { state.unlock() }; return servedCount }
    /// Clients connected now.
    public var clientCount: Int { state.lock(); defer { state.unlock() }; return clients.count }

    /// Starts the accept thread and, with `shm`, the slot-polling thread.
    public func start() {
        spawn { self.acceptLoop() }
        if let slots { spawn { self.slotLoop(slots) } }
    }

    private func spawn(_ body: @escaping @Sendable () -> Void) {
        threads.enter()
        let thread = Thread { body(); self.threads.leave() }
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// Announces GOAWAY to every client, refuses new ones, and waits up to `timeout` for the
    /// clients to leave while still answering them. Returns whether all of them left.
    @discardableResult
    public func drain(timeout: Duration, reason: String = "draining") -> Bool {
        state.lock()
        draining = true
        let current = Array(clients.values)
        state.unlock()
        let goAway = FrameEncoder.encode(GoAway(deadlineMilliseconds: UInt32(clamping: timeout.components.seconds * 1000), reason: reason))
        for client in current { try? client.send(goAway) }
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            if clientCount == 0 { return true }
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
        let current = Array(clients.values)
        state.unlock()
        guard wasRunning else { return }
        listener.shutdown()
        for client in current { client.connection.socket.shutdown() }
        threads.wait()
        listener.close()
        for connection in verbsConnections.values { connection.close() }
        verbsConnections.removeAll()
        verbs?.memory.close()
        verbs?.context.close()
        slots?.close()
    }

    deinit { assert(!running, "DataPlaneServer was not stopped") }

    // MARK: Connections

    private func acceptLoop() {
        while let socket = try? listener.accept() {
            state.lock()
            let open = running
            state.unlock()
            guard open else {
                socket.close()
                break
            }
            spawn { self.serve(socket) }
        }
    }

    private func serve(_ socket: Socket) {
        // Until the handshake is accepted the peer is a stranger: small frames, bounded waits.
        var small = configuration.limits
        small.maxPayload = min(small.maxPayload, 2 * small.maxText + 64)
        let connection = FrameConnection(socket: socket, limits: small)
        let client = Client(connection)
        defer {
            state.lock()
            clients.removeValue(forKey: ObjectIdentifier(client))
            if let slot = client.slot { slotsToRecycle.append(slot) }
            state.unlock()
            socket.close()
        }
        socket.setIOTimeout(configuration.handshakeTimeout)
        guard handshake(client) else { return }
        socket.setIOTimeout(nil)
        socket.setSendTimeout(configuration.sendTimeout)
        connection.limits = configuration.limits
        var response = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 64)
        defer { response.deallocate() }
        while true {
            let bytes: UnsafeRawBufferPointer
            do {
                guard let frame = try connection.readFrame() else { return }
                bytes = frame
            } catch let error as WireError {
                // The header itself is bad: the stream cannot be followed past it.
                refuse(client, sequence: 0, code: "\(error)".contains("'version'") ? .versionMismatch : .malformedFrame, "\(error)")
                return
            } catch {
                return
            }
            do {
                switch try Frame.decode(bytes, limits: configuration.limits) {
                case .request(let view):
                    let length: Int
                    do {
                        // Grow the buffer only for a request this server takes (`answer` checks it all).
                        let header = view.header
                        let size = header.tokens <= configuration.maxBatchTokens && header.hidden == computer.hidden
                            ? ResponseHeader(sequence: 0, tokens: header.tokens, hidden: header.hidden).frameSize : 0
                        if response.count < size {
                            response.deallocate()
                            response = .allocate(byteCount: size, alignment: 64)
                        }
                        length = try answer(view, into: response)
                    } catch let failure as ComputeFailure {
                        try client.send(FrameEncoder.encode(ErrorFrame(sequence: view.header.sequence, code: failure.code, message: failure.message)))
                        continue
                    }
                    try client.send(UnsafeRawBufferPointer(rebasing: response[0..<length]))
                default:
                    try client.send(FrameEncoder.encode(ErrorFrame(sequence: 0, code: .malformedFrame, message: "expected a request frame after the handshake")))
                }
            } catch let error as WireError {
                // A well-framed but invalid message: say why and keep serving this client.
                guard (try? client.send(FrameEncoder.encode(ErrorFrame(sequence: 0, code: .malformedFrame, message: "\(error)")))) != nil else { return }
            } catch {
                return  // the client is gone or stopped reading
            }
        }
    }

    /// Reads and answers the handshake; false when the client was refused or left.
    private func handshake(_ client: Client) -> Bool {
        let hello: Handshake
        do {
            guard let bytes = try client.connection.readFrame() else { return false }
            guard case .handshake(let frame) = try Frame.decode(bytes, limits: client.connection.limits) else {
                refuse(client, sequence: 0, code: .malformedFrame, "the first frame must be a handshake")
                return false
            }
            hello = frame
        } catch let error as WireError {
            refuse(client, sequence: 0, code: "\(error)".contains("'version'") ? .versionMismatch : .malformedFrame, "\(error)")
            return false
        } catch {
            return false
        }
        guard PoolToken.matches(hello.poolToken, configuration.poolToken) else {
            refuse(client, sequence: 0, code: .unauthorized, "wrong pool token")
            return false
        }
        // A slot freed a moment ago is reset by the slot thread within milliseconds: a client
        // that reconnects right away should get it rather than fall back to tcp.
        for _ in 0..<20 {
            state.lock()
            let waitForRecycling = freeSlots.isEmpty && !slotsToRecycle.isEmpty && hello.backend != .tcp
            state.unlock()
            guard waitForRecycling else { break }
            Thread.sleep(forTimeInterval: 0.001)
        }
        state.lock()
        guard running, !draining else {
            state.unlock()
            refuse(client, sequence: 0, code: .draining, "server \(configuration.serverID) is draining")
            return false
        }
        var backend = BackendKind.tcp
        var info: [UInt8] = []
        var slot: UInt32 = 0
        if hello.backend == .shm, let path = regionPath, let free = freeSlots.popLast() {
            backend = .shm
            info = Array(path.utf8)
            slot = UInt32(free)
            client.slot = free
        }
        let verbsSlot = hello.backend == .verbs && verbs != nil ? freeSlots.popLast() : nil
        clients[ObjectIdentifier(client)] = client
        state.unlock()
        if let verbsSlot {
            client.slot = verbsSlot  // recycled when the client leaves, whether or not the setup below works
            do {
                info = try connectVerbs(hello, slot: verbsSlot)
                backend = .verbs
                slot = UInt32(verbsSlot)
            } catch {
                refuse(client, sequence: 0, code: .malformedFrame, "verbs setup failed: \(error)")
                return false
            }
        }
        let reply = HandshakeReply(serverID: configuration.serverID, hidden: UInt32(computer.hidden), dtype: computer.dtype, backend: backend,
                                   experts: computer.experts.sorted(), slot: slot, backendInfo: info)
        return (try? client.send(FrameEncoder.encode(reply))) != nil
    }

    /// Connects a queue pair to the client's endpoint and installs it as slot `slot`'s peer;
    /// returns the server's endpoint for the reply.
    private func connectVerbs(_ hello: Handshake, slot: Int) throws -> [UInt8] {
        guard let verbs, let slots else { preconditionFailure("verbs slots without a device") }
        let remote = try VerbsEndpoint.decode(hello.backendInfo, frame: "handshake")
        let layout = slots.layout
        guard Int(remote.length) >= layout.slotStride else {
            throw WireError.invalid(frame: "handshake", field: "verbs.length",
                                    reason: "the client registered \(remote.length) bytes; a slot here needs \(layout.slotStride)")
        }
        let connection = try VerbsConnection(context: verbs.context)
        state.lock()
        verbsConnections[slot] = connection
        state.unlock()
        try connection.connect(to: remote)
        let start = slots.base + layout.requestFlag(slot)
        let done = DispatchSemaphore(value: 0)
        state.lock()
        peersToInstall.append((slot, VerbsPeer(connection: connection, memory: verbs.memory, localBase: start, remote: remote), done))
        state.unlock()
        guard done.wait(timeout: .now() + 5) == .success else { throw ComputeFailure(.draining, "the server is stopping") }
        return connection.endpoint(memory: verbs.memory, address: start, length: layout.slotStride,
                                   layout: SlotLayout(slots: 1, requestCapacity: layout.requestCapacity, responseCapacity: layout.responseCapacity)).encoded()
    }

    private func refuse(_ client: Client, sequence: UInt64, code: WireErrorCode, _ message: String) {
        try? client.send(FrameEncoder.encode(ErrorFrame(sequence: sequence, code: code, message: message)))
        client.connection.socket.shutdown()
    }

    // MARK: Computing

    /// Checks `view` against what this server hosts and computes its response frame straight into
    /// `out` (the sums are written in place, not copied); returns the frame's length.
    private func answer(_ view: RequestView, into out: UnsafeMutableRawBufferPointer) throws -> Int {
        let header = try check(view)
        let response = ResponseHeader(sequence: header.sequence, tokens: header.tokens, hidden: header.hidden)
        guard out.count >= response.frameSize else {
            throw ComputeFailure(.tooManyTokens, "the answer to \(header.tokens) tokens needs \(response.frameSize) bytes; the slot holds \(out.count)")
        }
        let offset = FrameEncoder.encodeResponseHeader(response, into: out)
        let count = header.tokens * header.hidden
        let sums = UnsafeMutableBufferPointer(start: (out.baseAddress! + offset).bindMemory(to: Float.self, capacity: count), count: count)
        computeLock.lock()
        defer { computeLock.unlock() }
        try computer.compute(view, into: sums)
        state.lock()
        servedCount += 1
        state.unlock()
        return response.frameSize
    }

    /// The request's shape, dtype, size and experts against what this server takes.
    private func check(_ view: RequestView) throws -> RequestHeader {
        let header = view.header
        guard header.hidden == computer.hidden, header.dtype == computer.dtype else {
            throw ComputeFailure(.shapeMismatch, "request has hidden \(header.hidden) of \(header.dtype); this server takes hidden \(computer.hidden) of \(computer.dtype)")
        }
        guard header.tokens <= configuration.maxBatchTokens else {
            throw ComputeFailure(.tooManyTokens, "request has \(header.tokens) tokens; this server takes at most \(configuration.maxBatchTokens)")
        }
        for t in 0..<header.tokens {
            for s in 0..<header.slotsPerToken {
                guard let id = view.expert(token: t, slot: s) else { continue }
                guard hosted.contains(HostedExpert(layer: header.layer, expert: id)) else {
                    throw ComputeFailure(.unknownExpert, "expert \(id) of layer \(header.layer) is not hosted by server \(configuration.serverID)")
                }
            }
        }
        return header
    }

    // MARK: Slots

    private func slotLoop(_ slots: SlotServer) {
        let layout = slots.layout
        let routing = UnsafeMutableRawBufferPointer.allocate(byteCount: layout.requestCapacity, alignment: 16)
        defer { routing.deallocate() }
        while true {
            state.lock()
            let open = running
            let recycled = slotsToRecycle
            slotsToRecycle.removeAll()
            let installs = peersToInstall
            peersToInstall.removeAll()
            let departed = recycled.compactMap { verbsConnections.removeValue(forKey: $0) }
            state.unlock()
            for install in installs {
                slots.reset(slot: install.slot, peer: install.peer)
                install.done.signal()
            }
            guard open else {
                departed.forEach { $0.close() }
                return
            }
            if !recycled.isEmpty {
                for slot in recycled { slots.reset(slot: slot) }
                departed.forEach { $0.close() }
                state.lock()
                freeSlots.append(contentsOf: recycled)
                state.unlock()
            }
            guard let (slot, sequence, bytes) = slots.waitForRequest(timeout: .milliseconds(5)) else { continue }
            // The answer is computed straight into the response area; a torn read (the client
            // moved on mid-request) is never published.
            _ = try? slots.respond(slot: slot, sequence: sequence) { out in
                var length: Int
                do {
                    guard case .request(let view) = try Frame.decode(bytes, limits: configuration.limits) else {
                        throw ComputeFailure(.malformedFrame, "a slot holds request frames only")
                    }
                    guard view.header.sequence == sequence else {
                        throw ComputeFailure(.malformedFrame, "request sequence \(view.header.sequence) differs from its slot's \(sequence)")
                    }
                    // The client may overwrite its slot at any time: validate and use a private copy of the routing.
                    length = try answer(try view.withRoutingCopied(to: routing, frame: "request"), into: out)
                } catch {
                    let failure = error as? ComputeFailure ?? ComputeFailure(.malformedFrame, "\(error)")
                    let frame = FrameEncoder.encode(ErrorFrame(sequence: sequence, code: failure.code, message: failure.message))
                    length = min(frame.count, out.count)
                    frame.withUnsafeBytes { out.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: length) }
                }
                return slots.isCurrent(slot: slot, sequence: sequence) ? length : nil
            }
        }
    }
}
