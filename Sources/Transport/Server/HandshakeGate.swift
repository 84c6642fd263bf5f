import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Why a server turned a connection away before it became a client; counted per reason
/// (`eaas_handshake_refusals_total{reason}` on a pod).
public enum HandshakeRefusal: String, Sendable, CaseIterable {
    /// The pool token did not match.
    case wrongToken = "wrong_token"
    /// The first frame was not a valid handshake.
    case malformed
    /// The peer speaks another protocol version.
    case versionMismatch = "version_mismatch"
    /// The handshake did not arrive whole within the deadline (a slow or stalled sender).
    case timeout
    /// The peer closed before its handshake was whole.
    case incomplete
    /// Too many connections were handshaking at once, in all or from the peer's address.
    case tooManyPending = "too_many_pending"
    case tooManyFromAddress = "too_many_from_address"
    /// The server has `maxClients` clients already.
    case tooManyClients = "too_many_clients"
    /// The server is draining.
    case draining
}

/// Where every connection waits until its handshake is whole and its pool token checked: one
/// thread polls the listener and all unauthenticated connections, each with a small buffer and
/// one deadline for the whole handshake (not per read), so a peer that trickles bytes costs a
/// descriptor and a few KiB until the deadline, never a thread. Their number is capped, in all
/// and per source address; beyond the cap a connection is closed at once. Only a connection whose
/// token matched gets a thread (a `ClientSession`), and those count against `maxClients`.
final class HandshakeGate {
    struct Limits {
        /// Connections handshaking at once, in all and from one address.
        var maxPending = 256
        var maxPendingPerAddress = 32
        /// The whole handshake, from accept to the last byte of the handshake frame.
        var deadline: Duration = .seconds(3)
        /// Largest handshake payload: the longest token, a verbs endpoint, and the fixed fields.
        var maxPayload = 8 + 4 + 2 + PoolToken.maxLength + 1 + 4 + 1024
    }

    private struct Pending {
        let socket: Socket
        let address: String
        let deadline: ContinuousClock.Instant
        var bytes: [UInt8] = []
        /// Bytes the frame has in all, once its header has been read.
        var total = FrameHeader.size
    }

    private unowned let server: DataPlaneServer
    private let listener: Socket
    private let limits: Limits
    private let wireLimits: WireLimits
    private var pending: [Int32: Pending] = [:]
    private var perAddress: [String: Int] = [:]
    /// A pipe whose write end `wake()` writes, so that `stop` interrupts the poll.
    private let wakeRead: Int32
    private let wakeWrite: Int32

    init(server: DataPlaneServer, listener: Socket, limits: Limits, wireLimits: WireLimits) {
        self.server = server
        self.listener = listener
        self.limits = limits
        var small = wireLimits
        small.maxPayload = limits.maxPayload
        self.wireLimits = small
        var fds: [Int32] = [0, 0]
        _ = pipe(&fds)
        wakeRead = fds[0]
        wakeWrite = fds[1]
        Self.setNonBlocking(listener.descriptor)
        Self.setNonBlocking(wakeRead)
    }

    /// Connections handshaking now.
    var pendingCount: Int { pending.count }

    /// Interrupts `run` (it returns once the server is no longer running).
    func wake() {
        var byte: UInt8 = 1
        _ = write(wakeWrite, &byte, 1)
    }

    /// Accepts and screens connections until the server stops; then closes what is still pending.
    func run(isRunning: () -> Bool) {
        defer {
            for entry in pending.values { entry.socket.close() }
            pending.removeAll()
            close(wakeRead)
            close(wakeWrite)
        }
        var descriptors: [pollfd] = []
        while isRunning() {
            descriptors.removeAll(keepingCapacity: true)
            descriptors.append(pollfd(fd: listener.descriptor, events: Int16(POLLIN), revents: 0))
            descriptors.append(pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0))
            for fd in pending.keys { descriptors.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) }
            let now = ContinuousClock.now
            let nearest = pending.values.map(\.deadline).min()
            let wait = nearest.map { max(0, min(1000, Self.milliseconds($0 - now))) } ?? 1000
            let ready = poll(&descriptors, nfds_t(descriptors.count), Int32(wait))
            if ready < 0, errno != EINTR { Thread.sleep(forTimeInterval: 0.01) }
            if descriptors[1].revents != 0 {
                var sink = [UInt8](repeating: 0, count: 64)
                while read(wakeRead, &sink, sink.count) > 0 {}
            }
            for entry in descriptors.dropFirst(2) where entry.revents != 0 { readable(entry.fd) }
            expire(now: ContinuousClock.now)
            if descriptors[0].revents != 0 { acceptAll() }
        }
    }

    private func acceptAll() {
        while true {
            let fd = accept(listener.descriptor, nil, nil)
            if fd < 0 {
                if errno == EINTR { continue }
                // EAGAIN: nothing more now. EMFILE and the like: transient; the next poll retries.
                if errno == EMFILE || errno == ENFILE { Thread.sleep(forTimeInterval: 0.01) }
                return
            }
            let address = Self.peerAddress(fd)
            let socket = Socket(descriptor: fd, label: "client \(address) of \(listener.label)")
            if pending.count >= limits.maxPending {
                turnAway(socket, .tooManyPending, .overloaded, "server has \(limits.maxPending) connections handshaking already")
                continue
            }
            if perAddress[address, default: 0] >= limits.maxPendingPerAddress {
                turnAway(socket, .tooManyFromAddress, .overloaded, "\(limits.maxPendingPerAddress) connections from \(address) are handshaking already")
                continue
            }
            Self.setNonBlocking(fd)
            pending[fd] = Pending(socket: socket, address: address, deadline: .now + limits.deadline)
            perAddress[address, default: 0] += 1
        }
    }

    private func readable(_ fd: Int32) {
        guard var entry = pending[fd] else { return }
        var chunk = [UInt8](repeating: 0, count: min(4096, entry.total - entry.bytes.count))
        let n = recv(fd, &chunk, chunk.count, 0)
        if n < 0, errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { return }
        guard n > 0 else {
            remove(fd)
            server.noteHandshakeRefusal(.incomplete)
            entry.socket.close()
            return
        }
        entry.bytes.append(contentsOf: chunk[0..<n])
        if entry.bytes.count == FrameHeader.size {
            do {
                let header = try entry.bytes.withUnsafeBytes { try FrameHeader.decode($0, maxPayload: limits.maxPayload) }
                guard header.kind == .handshake else {
                    return reject(fd, entry, .malformed, .malformedFrame, "the first frame must be a handshake")
                }
                entry.total = FrameHeader.size + header.payloadLength
            } catch {
                let version = (error as? WireError)?.field == "version"
                return reject(fd, entry, version ? .versionMismatch : .malformed, version ? .versionMismatch : .malformedFrame, "\(error)")
            }
        }
        guard entry.bytes.count == entry.total else {
            pending[fd] = entry
            return
        }
        let hello: Handshake
        do {
            guard case .handshake(let frame) = try entry.bytes.withUnsafeBytes({ try Frame.decode($0, limits: wireLimits) }) else {
                return reject(fd, entry, .malformed, .malformedFrame, "the first frame must be a handshake")
            }
            hello = frame
        } catch {
            return reject(fd, entry, .malformed, .malformedFrame, "\(error)")
        }
        guard PoolToken.matches(hello.poolToken, server.configuration.poolToken) else {
            return reject(fd, entry, .wrongToken, .unauthorized, "wrong pool token")
        }
        remove(fd)
        Self.setBlocking(fd)
        server.admit(entry.socket, hello: hello)
    }

    private func expire(now: ContinuousClock.Instant) {
        for (fd, entry) in pending where entry.deadline <= now {
            reject(fd, entry, .timeout, .malformedFrame, "no whole handshake within \(limits.deadline)")
        }
    }

    private func reject(_ fd: Int32, _ entry: Pending, _ reason: HandshakeRefusal, _ code: WireErrorCode, _ message: String) {
        remove(fd)
        turnAway(entry.socket, reason, code, message)
    }

    private func remove(_ fd: Int32) {
        guard let entry = pending.removeValue(forKey: fd) else { return }
        let left = perAddress[entry.address, default: 1] - 1
        perAddress[entry.address] = left > 0 ? left : nil
    }

    /// Says why in an error frame, without ever blocking (a peer that does not read loses it), and closes.
    private func turnAway(_ socket: Socket, _ reason: HandshakeRefusal, _ code: WireErrorCode, _ message: String) {
        server.noteHandshakeRefusal(reason)
        let frame = FrameEncoder.encode(ErrorFrame(sequence: 0, code: code, message: message))
        _ = frame.withUnsafeBytes { send(socket.descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
        // FIN after the frame; what the peer already sent is read and dropped, since closing with
        // unread input would reset the connection and could destroy the frame before it is read.
        shutdown(socket.descriptor, Int32(SHUT_WR))
        var sink = [UInt8](repeating: 0, count: 4096)
        for _ in 0..<16 where recv(socket.descriptor, &sink, sink.count, Int32(MSG_DONTWAIT)) > 0 {}
        socket.close()
    }

    static func setNonBlocking(_ fd: Int32) { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
    static func setBlocking(_ fd: Int32) { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) }

    static func milliseconds(_ duration: Duration) -> Int {
        Int(duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000) + 1
    }

    /// The peer's IP address as text (the per-address cap's key).
    static func peerAddress(_ fd: Int32) -> String {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let got = withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &length) } }
        guard got == 0 else { return "unknown" }
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        let status = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getnameinfo($0, length, &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST) }
        }
        return status == 0 ? String(cString: host) : "unknown"
    }
}

/// Says that connections were turned away, without letting a flood of them flood the log: the
/// first refusal of each reason is written at once, later ones are summed and written at most
/// once per `interval` ("refused 997 handshakes in the last 10 s: too_many_from_address 997").
public final class HandshakeRefusalLog: @unchecked Sendable {
    private let lock = NSLock()
    private let interval: Duration
    private let write: @Sendable (String) -> Void
    private var seen: Set<HandshakeRefusal> = []
    private var pending: [HandshakeRefusal: Int] = [:]
    private var last = ContinuousClock.now

    public init(interval: Duration = .seconds(10), write: @escaping @Sendable (String) -> Void) {
        self.interval = interval
        self.write = write
    }

    /// Counts one refusal; writes a line when the reason is new or the interval has passed.
    public func note(_ reason: HandshakeRefusal) {
        let line: String? = lock.withLock {
            let now = ContinuousClock.now
            if seen.insert(reason).inserted {
                return "refused a handshake: \(reason.rawValue)"
            }
            pending[reason, default: 0] += 1
            guard now - last >= interval else { return nil }
            defer {
                pending.removeAll()
                last = now
            }
            return summary(since: interval)
        }
        if let line { write(line) }
    }

    private func summary(since: Duration) -> String {
        let total = pending.values.reduce(0, +)
        let parts = pending.sorted { $0.value > $1.value }.map { "\($0.key.rawValue) \($0.value)" }.joined(separator: ", ")
        return "refused \(total) handshakes in the last \(Int(since.components.seconds)) s: \(parts)"
    }
}
