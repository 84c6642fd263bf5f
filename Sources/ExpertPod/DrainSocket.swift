import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The pod's drain control: a Unix-domain socket in the pod's own filesystem (mode 0600, so only
/// the pod's user, i.e. a preStop `exec` in the same container, can reach it), never a network
/// port. `eaas drain --socket PATH` connects, sends `drain`, and waits for the pod's answer, which
/// comes once the drain has ended (clients left, or the grace period ran out).
///
/// Why not `/drain` on HTTP: the metrics port is scraped by Prometheus and the controller and is
/// reachable from any pod in the cluster, so a state change there would need the pool token, and
/// a preStop `httpGet` can only carry headers written in the Deployment in plain text. An `exec`
/// hook needs no secret at all: reaching the socket already means being inside the container.
///
/// A drained pod cannot serve again (it refuses new clients), so once the drain has been answered
/// the pod shuts itself down (`onDrained`), rather than looking alive forever.
public final class DrainSocket: @unchecked Sendable {
    public let path: String
    private let descriptor: Int32
    private let lock = NSLock()
    private var closed = false
    private let drain: @Sendable () async -> Bool
    private let onDrained: @Sendable () -> Void
    private let done = DispatchSemaphore(value: 0)

    /// Longest request line; anything else is refused.
    static let maxRequest = 64

    /// Binds `path` (replacing a socket a previous run left there; any other file is an error).
    /// - Parameters:
    ///   - drain: runs the drain; true when every client left.
    ///   - onDrained: called after the answer went out (the pod stops itself).
    public init(path: String, drain: @escaping @Sendable () async -> Bool, onDrained: @escaping @Sendable () -> Void) throws {
        self.path = path
        self.drain = drain
        self.onDrained = onDrained
        var address = try Self.address(path)
        var existing = stat()
        if lstat(path, &existing) == 0 {
            guard existing.st_mode & S_IFMT == S_IFSOCK else { throw DrainSocketError("\(path) exists and is not a socket; not replacing it") }
            unlink(path)
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw DrainSocketError("socket(AF_UNIX) for \(path): \(String(cString: strerror(errno)))") }
        // Created with no access for anyone but the owner, before anyone can connect.
        let previous = umask(0o177)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        let bindErrno = errno
        umask(previous)
        guard bound == 0 else {
            Glibc.close(fd)
            throw DrainSocketError("bind \(path): \(String(cString: strerror(bindErrno)))")
        }
        chmod(path, 0o600)
        guard listen(fd, 4) == 0 else {
            Glibc.close(fd)
            unlink(path)
            throw DrainSocketError("listen \(path): \(String(cString: strerror(errno)))")
        }
        descriptor = fd
        let thread = Thread { [self] in acceptLoop() }
        thread.stackSize = 256 << 10
        thread.start()
    }

    /// Stops accepting and removes the socket file. Safe to call twice.
    public func close() {
        let first = lock.withLock {
            defer { closed = true }
            return !closed
        }
        guard first else { return }
        shutdown(descriptor, Int32(SHUT_RDWR))
        done.wait()
        Glibc.close(descriptor)
        unlink(path)
    }

    deinit { assert(closed, "DrainSocket \(path) was not closed") }

    private func acceptLoop() {
        defer { done.signal() }
        while true {
            let client = accept(descriptor, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return  // shut down
            }
            serve(client)
        }
    }

    /// Reads one line (bounded in size and time), drains, answers, and stops the pod.
    private func serve(_ client: Int32) {
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while line.count <= Self.maxRequest, recv(client, &byte, 1, 0) == 1, byte != 0x0A { line.append(byte) }
        guard String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespaces) == "drain" else {
            Self.send(client, "error: expected 'drain'\n")
            Glibc.close(client)
            return
        }
        let semaphore = DispatchSemaphore(value: 0)
        final class Box: @unchecked Sendable { var allLeft = false }
        let box = Box()
        let drain = self.drain
        Task {
            box.allLeft = await drain()
            semaphore.signal()
        }
        semaphore.wait()
        Self.send(client, box.allLeft ? "drained\n" : "drain timed out\n")
        Glibc.close(client)
        onDrained()
    }

    private static func send(_ fd: Int32, _ text: String) {
        var bytes = Array(text.utf8)
        _ = Glibc.send(fd, &bytes, bytes.count, Int32(MSG_NOSIGNAL))
    }

    static func address(_ path: String) throws -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity else {
            throw DrainSocketError("drain socket path '\(path)' is \(bytes.count) bytes; a Unix socket path holds 1 to \(capacity - 1)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        return address
    }

    /// The preStop side: asks the pod at `path` to drain and waits for its answer, at most
    /// `timeout`. Returns the pod's answer (`drained` or `drain timed out`).
    public static func request(path: String, timeout: Duration) throws -> String {
        var address = try address(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw DrainSocketError("socket(AF_UNIX): \(String(cString: strerror(errno)))") }
        defer { Glibc.close(fd) }
        let connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard connected == 0 else { throw DrainSocketError("cannot connect to the pod's drain socket \(path): \(String(cString: strerror(errno)))") }
        let seconds = max(1, Int(timeout.components.seconds))
        var value = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
        send(fd, "drain\n")
        var answer: [UInt8] = []
        var byte: UInt8 = 0
        while answer.count < 256 {
            let n = recv(fd, &byte, 1, 0)
            if n == 1 {
                if byte == 0x0A { break }
                answer.append(byte)
                continue
            }
            if n < 0, errno == EINTR { continue }
            if n < 0, errno == EAGAIN || errno == EWOULDBLOCK { throw DrainSocketError("the pod did not answer within \(seconds) s") }
            break
        }
        guard !answer.isEmpty else { throw DrainSocketError("the pod closed the drain socket without an answer") }
        return String(decoding: answer, as: UTF8.self)
    }
}

/// A drain-socket failure, with what went wrong.
public struct DrainSocketError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
