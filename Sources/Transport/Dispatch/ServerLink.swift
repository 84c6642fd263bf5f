import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A request as its pieces, left where the caller keeps them: the routing, and which rows of the
/// caller's hidden states it carries. Each backend moves them with as few copies as it can: `tcp`
/// sends the rows straight from `states`; `shm` and `verbs` gather them into the slot once.
public struct OutgoingRequest {
    public let header: RequestHeader
    /// `[tokens, slots]` expert ids and gate weights.
    public let ids: UnsafeBufferPointer<UInt16>
    public let weights: UnsafeBufferPointer<Float>
    /// The caller's `[rows, hidden]` states in `header.dtype`; `rows[i]` is the row token i sends.
    public let states: UnsafeRawBufferPointer
    public let rows: UnsafeBufferPointer<Int>

    public init(header: RequestHeader, ids: UnsafeBufferPointer<UInt16>, weights: UnsafeBufferPointer<Float>,
                states: UnsafeRawBufferPointer, rows: UnsafeBufferPointer<Int>) {
        precondition(rows.count == header.tokens, "one state row per token")
        precondition(rows.allSatisfy { $0 >= 0 && ($0 + 1) * header.hidden * header.dtype.byteSize <= states.count }, "state row out of range")
        self.header = header
        self.ids = ids
        self.weights = weights
        self.states = states
        self.rows = rows
    }

    var rowBytes: Int { header.hidden * header.dtype.byteSize }

    /// Writes the whole frame into `buffer` (at least `header.frameSize` bytes).
    func encode(into buffer: UnsafeMutableRawBufferPointer) {
        let offset = FrameEncoder.encodeRequestRouting(header, ids: ids, weights: weights, into: buffer)
        for (i, row) in rows.enumerated() {
            (buffer.baseAddress! + offset + i * rowBytes).copyMemory(from: states.baseAddress! + row * rowBytes, byteCount: rowBytes)
        }
    }
}

/// A client's open connection to one server, over the backend the server granted in the
/// handshake: send a request, then receive frames until the answer to it.
public protocol ServerLink: AnyObject {
    var backend: BackendKind { get }
    /// Sends `request` (into memory the server reads, where the backend allows).
    func send(_ request: OutgoingRequest) throws
    /// The next frame for the request `sequence` sent last (its response, or a GOAWAY or error on
    /// the way), or nil when none came before `deadline`. Throws when the server is gone. The
    /// frame points into the link's buffers: valid until the next call. `likelyBy` is when the
    /// answer usually is there (sent + most of the typical round trip): a polling backend sleeps
    /// until then rather than take CPU from the server it waits on.
    func receive(sequence: UInt64, until deadline: ContinuousClock.Instant, likelyBy: ContinuousClock.Instant) throws -> Frame?
    func close()
}

/// Opens links: the TCP connection and handshake every backend starts with, then the backend.
public enum ServerLinks {
    /// - Parameters:
    ///   - verbs: the dispatcher's opened device, when it asks for `verbs`.
    ///   - hidden, dtype: the shape of the step's states, to size a `verbs` client's slot.
    public static func open(to server: ServerInfo, configuration: Dispatcher.Configuration, verbs: VerbsContext?, hidden: Int, dtype: WireDType) throws -> ServerLink {
        guard let colon = server.address.lastIndex(of: ":"), let port = Int(server.address[server.address.index(after: colon)...]) else {
            throw TransportError.unreachable(address: server.address, reason: "is not host:port")
        }
        let connection = try FrameConnection.connect(host: String(server.address[..<colon]), port: port, limits: configuration.limits,
                                                     timeout: configuration.connectTimeout)
        var local: VerbsClientSide?
        do {
            // Sends and receives never block past the longest timeout, even mid-frame.
            connection.socket.setIOTimeout(configuration.maximumTimeout)
            var info: [UInt8] = []
            if configuration.backend == .verbs, let verbs {
                let side = try VerbsClientSide(context: verbs, layout: SlotLayout(
                    slots: 1,
                    requestCapacity: RequestHeader(sequence: 0, layer: 0, dtype: dtype, slotsPerToken: configuration.verbsSlotsPerToken,
                                                   tokens: configuration.verbsSlotTokens, hidden: hidden).frameSize,
                    responseCapacity: max(ResponseHeader(sequence: 0, tokens: configuration.verbsSlotTokens, hidden: hidden).frameSize, 4096)))
                local = side
                info = side.endpoint.encoded()
            }
            let reply = try handshake(connection, server: server, backend: configuration.backend, backendInfo: info, configuration: configuration)
            switch reply.backend {
            case .tcp:
                local?.close()
                return TCPLink(connection: connection)
            case .shm:
                guard let path = String(validating: reply.backendInfo, as: UTF8.self), path.hasPrefix("/") else {
                    throw WireError.invalid(frame: "handshake reply", field: "backend_info", reason: "is not the absolute path of a slot region")
                }
                local?.close()
                let region = try SharedRegion.open(path: path)
                do {
                    return SlotLink(connection: connection, backend: .shm, slot: try ClientSlot(region: region, slot: Int(reply.slot), epoch: reply.epoch)) { region.close() }
                } catch {
                    region.close()
                    throw error
                }
            case .verbs:
                guard let side = local else {
                    throw WireError.invalid(frame: "handshake reply", field: "backend", reason: "is verbs, which this client did not ask for")
                }
                let remote = try VerbsEndpoint.decode(reply.backendInfo, frame: "handshake reply")
                let slot = try side.connect(to: remote, slot: Int(reply.slot), epoch: reply.epoch)
                return SlotLink(connection: connection, backend: .verbs, slot: slot) { side.close() }
            }
        } catch {
            local?.close()
            connection.close()
            throw error
        }
    }
}

extension ServerLinks {
    /// Sends the handshake on `connection` and returns the server's reply.
    static func handshake(_ connection: FrameConnection, server: ServerInfo, backend: BackendKind, backendInfo: [UInt8],
                          configuration: Dispatcher.Configuration) throws -> HandshakeReply {
        try PoolToken.validate(configuration.poolToken, source: "the dispatcher's configuration")
        try connection.write(FrameEncoder.encode(Handshake(clientID: configuration.clientID, maxBatchTokens: configuration.maxBatchTokens,
                                                           poolToken: configuration.poolToken, backend: backend, backendInfo: backendInfo)))
        guard try TCPLink.wait(connection, for: configuration.maximumTimeout), let bytes = try connection.readFrame() else {
            throw TransportError.unreachable(address: server.address, reason: "no handshake reply within \(configuration.maximumTimeout)")
        }
        switch try Frame.decode(bytes, limits: configuration.limits) {
        case .handshakeReply(let reply):
            // A server with no model (synthetic experts, empty digest) is not checked; every
            // expert pod sends its checkpoint's digest.
            if let expected = configuration.modelDigest, !reply.modelDigest.isEmpty, reply.modelDigest != expected {
                func hex(_ bytes: [UInt8]) -> String { bytes.isEmpty ? "(none)" : bytes.map { String(format: "%02x", $0) }.joined() }
                throw Dispatcher.StepError.wrongModel(server: server.address, expected: hex(expected), served: hex(reply.modelDigest))
            }
            return reply
        case .error(let error) where error.code == .draining:
            throw TransportError.unreachable(address: server.address, reason: "draining: \(error.message)")
        case .error(let error): throw Dispatcher.StepError.refused(server: server.id, code: error.code, message: error.message)
        default: throw WireError.invalid(frame: "handshake reply", field: "kind", reason: "is not a handshake reply")
        }
    }

    /// Asks the server at `address` what it hosts and which hidden size and wire dtype it expects,
    /// with a plain `tcp` handshake, then closes the connection.
    public static func probe(address: String, configuration: Dispatcher.Configuration) throws -> HandshakeReply {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
            throw TransportError.unreachable(address: address, reason: "is not host:port")
        }
        let connection = try FrameConnection.connect(host: String(address[..<colon]), port: port, limits: configuration.limits,
                                                     timeout: configuration.connectTimeout)
        defer { connection.close() }
        connection.socket.setIOTimeout(configuration.maximumTimeout)
        return try handshake(connection, server: ServerInfo(id: address, address: address, experts: []), backend: .tcp, backendInfo: [],
                             configuration: configuration)
    }
}

/// Requests and answers as frames on the TCP connection.
final class TCPLink: ServerLink {
    let connection: FrameConnection
    private var frame: [UInt8] = []
    var backend: BackendKind { .tcp }

    init(connection: FrameConnection) { self.connection = connection }

    private var parts: [iovec] = []

    /// Header and routing from a small buffer, then the state rows from where they are (runs of
    /// adjacent rows as one part): one `sendmsg`, no copy of the states.
    func send(_ request: OutgoingRequest) throws {
        let header = request.header
        let routingSize = header.frameSize - header.stateBytes
        if frame.count < header.frameSize - header.stateBytes { frame = [UInt8](repeating: 0, count: routingSize) }
        try frame.withUnsafeMutableBytes { buffer in
            // The routing encoder checks room for the whole frame; hand it a view that claims it
            // and write only the routing part.
            let view = UnsafeMutableRawBufferPointer(start: buffer.baseAddress, count: header.frameSize)
            let offset = FrameEncoder.encodeRequestRouting(header, ids: request.ids, weights: request.weights, into: view)
            precondition(offset == routingSize, "routing size mismatch")
            parts.removeAll(keepingCapacity: true)
            parts.append(iovec(iov_base: buffer.baseAddress, iov_len: routingSize))
            let rowBytes = request.rowBytes
            var previous = -2
            for row in request.rows {
                if row == previous + 1 {
                    parts[parts.count - 1].iov_len += rowBytes
                } else {
                    parts.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: request.states.baseAddress! + row * rowBytes), iov_len: rowBytes))
                }
                previous = row
            }
            try connection.socket.writeAll(&parts)
        }
    }

    func receive(sequence: UInt64, until deadline: ContinuousClock.Instant, likelyBy: ContinuousClock.Instant = .now) throws -> Frame? {
        let left = deadline - ContinuousClock.now
        guard left > .zero, try Self.wait(connection, for: left) else { return nil }
        guard let bytes = try connection.readFrame() else {
            throw TransportError.unreachable(address: connection.socket.label, reason: "the server closed the connection")
        }
        return try Frame.decode(bytes, limits: connection.limits)
    }

    func close() { connection.close() }

    /// Waits until `connection` has bytes to read or `timeout` passes.
    static func wait(_ connection: FrameConnection, for timeout: Duration?) throws -> Bool {
        var descriptor = pollfd(fd: connection.socket.descriptor, events: Int16(POLLIN), revents: 0)
        let milliseconds = timeout.map(Socket.milliseconds) ?? 0
        while true {
            let n = poll(&descriptor, 1, milliseconds)
            if n >= 0 { return n > 0 }
            if errno != EINTR { return false }
        }
    }
}

/// Requests and answers through a slot in the server's memory (`shm`: its shared region, mapped;
/// `verbs`: our registered copy, written into the server's by RDMA). The TCP connection stays
/// open as the control channel (GOAWAY comes on it, and its end means the server is gone), and
/// carries any request too large for the slot.
final class SlotLink: ServerLink {
    let connection: FrameConnection
    let slot: ClientSlot
    let backend: BackendKind
    private let release: () -> Void
    private let tcp: TCPLink
    /// Whether the request in flight went over TCP because it did not fit the slot.
    private var sentOverTCP = false
    private var received = 0

    init(connection: FrameConnection, backend: BackendKind, slot: ClientSlot, release: @escaping () -> Void) {
        self.connection = connection
        self.backend = backend
        self.slot = slot
        self.release = release
        tcp = TCPLink(connection: connection)
    }

    func send(_ request: OutgoingRequest) throws {
        let size = request.header.frameSize, sequence = request.header.sequence
        guard size <= slot.layout.requestCapacity else {
            sentOverTCP = true
            return try tcp.send(request)
        }
        sentOverTCP = false
        // The marker goes first: the server may still be reading an abandoned earlier request.
        try slot.beginRequest(sequence: sequence)
        request.encode(into: UnsafeMutableRawBufferPointer(rebasing: slot.requestBuffer[0..<size]))
        try slot.publishRequest(sequence: sequence, length: size)
    }

    func receive(sequence: UInt64, until deadline: ContinuousClock.Instant, likelyBy: ContinuousClock.Instant) throws -> Frame? {
        if sentOverTCP { return try tcp.receive(sequence: sequence, until: deadline) }
        // Answers can come faster than the spin below ever looks at the control channel: look at
        // it every 32nd request too, so that a GOAWAY is seen even when the server never lags.
        received += 1
        if received & 31 == 0, let frame = try controlFrame() { return frame }
        // Sleeps end early when the control channel has something: a GOAWAY, an error, or the
        // server's end (a killed server's socket hangs up at once), so a dead server is seen
        // within a poll, not after its adaptive timeout.
        var backoff = Backoff(sleepUntil: min(likelyBy, deadline), wakeOn: connection.socket.descriptor)
        var round = 0
        let clock = ContinuousClock()
        while true {
            if let bytes = slot.pollResponse(sequence: sequence) { return try Frame.decode(bytes, limits: connection.limits) }
            // Look at the control channel when it woke a sleep, and now and then while spinning.
            if backoff.takeWake() || round & 255 == 255, let frame = try controlFrame() { return frame }
            if clock.now >= deadline { return nil }
            round += 1
            backoff.pause()
        }
    }

    /// A frame waiting on the control channel (GOAWAY or an error), if any; throws when the
    /// server closed it.
    private func controlFrame() throws -> Frame? {
        guard try TCPLink.wait(connection, for: nil) else { return nil }
        guard let bytes = try connection.readFrame() else {
            throw TransportError.unreachable(address: connection.socket.label, reason: "the server closed its control connection")
        }
        return try Frame.decode(bytes, limits: connection.limits)
    }

    func close() {
        connection.close()
        release()
    }
}

/// A `verbs` client's side of one link: a queue pair and its registered copy of one slot.
final class VerbsClientSide {
    let connection: VerbsConnection
    let memory: VerbsMemory
    let buffer: UnsafeMutableRawPointer
    let endpoint: VerbsEndpoint
    private var closed = false

    init(context: VerbsContext, layout: SlotLayout) throws {
        let length = layout.slotStride
        buffer = .allocate(byteCount: length, alignment: 4096)
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: length)
        do {
            memory = try context.register(buffer, count: length)
        } catch {
            buffer.deallocate()
            throw error
        }
        do {
            connection = try VerbsConnection(context: context)
        } catch {
            memory.close()
            buffer.deallocate()
            throw error
        }
        endpoint = connection.endpoint(memory: memory, address: buffer, length: length, layout: layout)
    }

    /// Connects to the server's queue pair and returns the client slot over it.
    func connect(to remote: VerbsEndpoint, slot: Int, epoch: UInt16) throws -> ClientSlot {
        let layout = remote.layout
        guard layout.slotStride <= memory.count, Int(remote.length) >= layout.slotStride else {
            throw WireError.invalid(frame: "handshake reply", field: "backend_info",
                                    reason: "the server's slot needs \(layout.slotStride) bytes; this client registered \(memory.count)")
        }
        try connection.connect(to: remote)
        let peer = VerbsPeer(connection: connection, memory: memory, localBase: buffer, remote: remote)
        return ClientSlot(slot: slot, epoch: epoch, layout: layout, base: buffer, peer: peer, owner: self)
    }

    func close() {
        guard !closed else { return }
        closed = true
        connection.close()
        memory.close()
        buffer.deallocate()
    }
}
