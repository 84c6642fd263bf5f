import Atomics
import Foundation

/// One client's connection to a `DataPlaneServer`, on its own thread, once the `HandshakeGate`
/// has checked its handshake: the reply, then either
/// its `tcp` requests (each handed to the engine and answered on the connection) or, for a slot
/// client, the control channel that only ends.
final class ClientSession: @unchecked Sendable {
    unowned let server: DataPlaneServer
    let socket: Socket
    let connection: FrameConnection
    /// Held while writing, so that a GOAWAY from `drain` never interleaves with an answer, and
    /// while closing, so that nothing is written to a closed descriptor.
    private let writeLock = NSLock()
    private var closed = false
    private var slot: Int?
    private let busy = ManagedAtomic(false)

    /// Whether a tcp request of this client is being computed or answered right now.
    var isBusy: Bool { busy.load(ordering: .acquiring) }

    private let hello: Handshake

    /// - Parameter hello: the client's handshake, its pool token already checked.
    init(server: DataPlaneServer, socket: Socket, hello: Handshake) {
        self.server = server
        self.socket = socket
        self.hello = hello
        // An accepted client's frames are bounded by the largest request this server takes.
        var limits = server.configuration.limits
        limits.maxPayload = min(limits.maxPayload, max(server.maxRequestFrame, 2 * limits.maxText + 64))
        connection = FrameConnection(socket: socket, limits: limits)
    }

    func send(_ frame: [UInt8]) throws {
        writeLock.lock()
        defer { writeLock.unlock() }
        guard !closed else { throw TransportError.unreachable(address: socket.label, reason: "connection closed") }
        try connection.write(frame)
    }

    func send(_ frame: UnsafeRawBufferPointer) throws {
        writeLock.lock()
        defer { writeLock.unlock() }
        guard !closed else { throw TransportError.unreachable(address: socket.label, reason: "connection closed") }
        try connection.write(frame)
    }

    func run() {
        defer {
            server.state.lock()
            server.sessions.removeValue(forKey: ObjectIdentifier(self))
            server.connections.removeValue(forKey: ObjectIdentifier(socket))
            server.state.unlock()
            if let slot { server.recycle(slot: slot) }
            writeLock.lock()
            closed = true
            socket.close()
            writeLock.unlock()
        }
        socket.setSendTimeout(server.configuration.sendTimeout)
        guard answerHandshake() else { return }
        socket.enableKeepalive()
        // A request too large is read past (no allocation) and refused on its own; only one over
        // the wire format's own limit ends the stream.
        connection.skipUpTo = server.configuration.limits.maxPayload
        serveRequests()
    }

    // MARK: Handshake

    /// Answers the handshake; false when the client was refused or left.
    private func answerHandshake() -> Bool {
        // The reply goes out before any GOAWAY a concurrent drain sends: hold the write lock from
        // joining the session list until the reply is written.
        writeLock.lock()
        defer { writeLock.unlock() }
        guard let (backend, slot, epoch, info) = admit(hello) else { return false }
        let reply = HandshakeReply(serverID: server.configuration.serverID, hidden: UInt32(server.computer.hidden), dtype: server.computer.dtype,
                                   backend: backend, experts: server.computer.experts.sorted(), slot: slot, epoch: epoch, backendInfo: info,
                                   modelDigest: server.configuration.modelDigest)
        return (try? connection.write(FrameEncoder.encode(reply))) != nil
    }

    /// Joins the session list and picks the backend; nil when the client was refused.
    private func admit(_ hello: Handshake) -> (BackendKind, UInt32, UInt16, [UInt8])? {
        // A slot freed a moment ago is reset by the engine within milliseconds: a client that
        // reconnects right away should get it rather than fall back to tcp.
        for _ in 0..<20 {
            server.state.lock()
            let wait = hello.backend != .tcp && server.freeSlots.isEmpty && server.recycling > 0
            server.state.unlock()
            guard wait else { break }
            Thread.sleep(forTimeInterval: 0.001)
        }
        server.state.lock()
        guard server.running, !server.draining else {
            server.state.unlock()
            server.noteHandshakeRefusal(.draining)
            refuseLocked(.draining, "server \(server.configuration.serverID) is draining")
            return nil
        }
        var taken: (slot: Int, epoch: UInt16)?
        if hello.backend == .shm && server.regionPath != nil || hello.backend == .verbs && server.verbs != nil {
            taken = server.freeSlots.popLast()
        }
        slot = taken?.slot
        server.sessions[ObjectIdentifier(self)] = self
        server.state.unlock()
        guard let taken else { return (.tcp, 0, 0, []) }
        if hello.backend == .shm { return (.shm, UInt32(taken.slot), taken.epoch, Array(server.regionPath!.utf8)) }
        do {
            let (epoch, info) = try connectVerbs(hello, slot: taken.slot)
            return (.verbs, UInt32(taken.slot), epoch, info)
        } catch {
            refuseLocked(.malformedFrame, "verbs setup failed: \(error)")
            return nil
        }
    }

    /// Connects a queue pair to the client's endpoint and has the engine install it as the slot's
    /// peer; returns the slot's new epoch and the server's endpoint for the reply.
    private func connectVerbs(_ hello: Handshake, slot: Int) throws -> (UInt16, [UInt8]) {
        guard let verbs = server.verbs, let slots = server.slots else { preconditionFailure("verbs slots without a device") }
        let remote = try VerbsEndpoint.decode(hello.backendInfo, frame: "handshake")
        let layout = slots.layout
        guard Int(remote.length) >= layout.slotStride else {
            throw WireError.invalid(frame: "handshake", field: "verbs.length",
                                    reason: "the client registered \(remote.length) bytes; a slot here needs \(layout.slotStride)")
        }
        let queuePair = try VerbsConnection(context: verbs.context, quickGiveUp: true)
        server.state.lock()
        server.verbsConnections[slot] = queuePair
        server.state.unlock()
        try queuePair.connect(to: remote)
        let memory = verbs.memories[slot]
        let peer = VerbsPeer(connection: queuePair, memory: memory, localBase: memory.base, remote: remote)
        let installed = DispatchSemaphore(value: 0)
        final class Box: @unchecked Sendable { var epoch: UInt16 = 0 }
        let box = Box()
        server.engine.reset(slot: slot, peer: peer) { epoch in
            box.epoch = epoch
            installed.signal()
        }
        guard installed.wait(timeout: .now() + 5) == .success else { throw ComputeFailure(.draining, "the server is stopping") }
        let endpoint = queuePair.endpoint(memory: memory, address: memory.base, length: layout.slotStride,
                                          layout: SlotLayout(slots: 1, requestCapacity: layout.requestCapacity, responseCapacity: layout.responseCapacity))
        return (box.epoch, endpoint.encoded())
    }

    private func refuse(_ code: WireErrorCode, _ message: String) {
        writeLock.lock()
        defer { writeLock.unlock() }
        refuseLocked(code, message)
    }

    private func refuseLocked(_ code: WireErrorCode, _ message: String) {
        try? connection.write(FrameEncoder.encode(ErrorFrame(sequence: 0, code: code, message: message)))
        socket.shutdown()
    }

    // MARK: Requests

    /// Answers a request frame too large to take with the reason its own header gives (too
    /// many tokens, a wrong hidden size), or as malformed.
    private func refuseOversized(_ oversized: FrameConnection.Oversized) {
        var sequence: UInt64 = 0
        var failure = ComputeFailure(.malformedFrame, "\(oversized)")
        let prefix = oversized.prefix
        if oversized.header.kind == .request, prefix.count >= 24 {
            func u32(_ at: Int) -> Int { Int(prefix[at]) | Int(prefix[at + 1]) << 8 | Int(prefix[at + 2]) << 16 | Int(prefix[at + 3]) << 24 }
            sequence = (0..<8).reduce(UInt64(0)) { $0 | UInt64(prefix[$1]) << (8 * $1) }
            let tokens = u32(12), hidden = u32(16)
            if hidden != server.computer.hidden {
                failure = ComputeFailure(.shapeMismatch, "request has hidden \(hidden); this server takes hidden \(server.computer.hidden)")
            } else if tokens > server.configuration.maxBatchTokens {
                failure = ComputeFailure(.tooManyTokens, "request has \(tokens) tokens; this server takes at most \(server.configuration.maxBatchTokens)")
            }
        }
        server.noteRefused(failure.code, arrived: .now)
        try? send(FrameEncoder.encode(ErrorFrame(sequence: sequence, code: failure.code, message: failure.message)))
    }

    private func serveRequests() {
        var response = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 64)
        defer { response.deallocate() }
        while true {
            let bytes: UnsafeRawBufferPointer
            do {
                guard let frame = try connection.readFrame() else { return }
                bytes = frame
            } catch let oversized as FrameConnection.Oversized {
                refuseOversized(oversized)
                continue
            } catch let error as WireError {
                // The header itself is bad: the stream cannot be followed past it.
                let code: WireErrorCode = "\(error)".contains("'version'") ? .versionMismatch : .malformedFrame
                server.noteRefused(code, arrived: .now)
                refuse(code, "\(error)")
                return
            } catch {
                return
            }
            let arrived = ContinuousClock.now
            do {
                guard case .request(let view) = try Frame.decode(bytes, limits: connection.limits) else {
                    server.noteRefused(.malformedFrame, arrived: arrived)
                    try send(FrameEncoder.encode(ErrorFrame(sequence: 0, code: .malformedFrame, message: "expected a request frame after the handshake")))
                    continue
                }
                do {
                    try server.check(view)
                } catch let failure as ComputeFailure {
                    server.noteRefused(failure.code, arrived: arrived)
                    try send(FrameEncoder.encode(ErrorFrame(sequence: view.header.sequence, code: failure.code, message: failure.message)))
                    continue
                }
                let size = ResponseHeader(sequence: 0, tokens: view.header.tokens, hidden: view.header.hidden).frameSize
                if response.count < size {
                    response.deallocate()
                    response = .allocate(byteCount: size, alignment: 64)
                }
                let submission = ServingEngine.Submission(request: view, output: response)
                busy.store(true, ordering: .releasing)
                defer { busy.store(false, ordering: .releasing) }
                server.engine.submit(submission)
                submission.wait()
                switch submission.result {
                case .success(let length):
                    try send(UnsafeRawBufferPointer(rebasing: response[0..<length]))
                case .failure(let failure):
                    try send(FrameEncoder.encode(ErrorFrame(sequence: view.header.sequence, code: failure.code, message: failure.message)))
                }
            } catch let error as WireError {
                // A well-framed but invalid message: say why and keep serving this client.
                server.noteRefused(.malformedFrame, arrived: arrived)
                guard (try? send(FrameEncoder.encode(ErrorFrame(sequence: 0, code: .malformedFrame, message: "\(error)")))) != nil else { return }
            } catch {
                return  // the client is gone or stopped reading
            }
        }
    }
}
