import Foundation
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A TCP socket descriptor, the only place the TCP backend makes socket calls. Every failing call
/// becomes `TransportError.system` naming the call and the peer. `close()` must be called; `deinit`
/// asserts it.
public final class Socket: @unchecked Sendable {
    public let descriptor: Int32
    /// The peer or local address, for messages.
    public let label: String
    /// Guards `closed` so that `shutdown()` from another thread never reaches a descriptor number
    /// that `close()` has already released (and the kernel may have handed to someone else).
    private let lifecycle = NSLock()
    private var closed = false

    init(descriptor: Int32, label: String) {
        self.descriptor = descriptor
        self.label = label
    }

    /// Listens on `host:port` (port 0 picks a free one; see `localPort`).
    public static func listen(host: String, port: Int, backlog: Int32 = 128) throws -> Socket {
        let address = try resolve(host: host, port: port, passive: true)
        defer { freeaddrinfo(address) }
        let fd = socket(address.pointee.ai_family, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw failure("socket", "\(host):\(port)") }
        let s = Socket(descriptor: fd, label: "\(host):\(port)")
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        guard bind(fd, address.pointee.ai_addr, address.pointee.ai_addrlen) == 0 else { let e = failure("bind", s.label); s.close(); throw e }
        guard Glibc.listen(fd, backlog) == 0 else { let e = failure("listen", s.label); s.close(); throw e }
        return s
    }

    /// Connects to `host:port` with `TCP_NODELAY` set, trying each resolved address in turn and
    /// giving each at most `timeout` (a dead host that never answers cannot stall the caller).
    public static func connect(host: String, port: Int, timeout: Duration = .seconds(5)) throws -> Socket {
        let addresses = try resolve(host: host, port: port, passive: false)
        defer { freeaddrinfo(addresses) }
        var lastError: TransportError = .unreachable(address: "\(host):\(port)", reason: "no address")
        var cursor: UnsafeMutablePointer<addrinfo>? = addresses
        while let address = cursor {
            cursor = address.pointee.ai_next
            let fd = socket(address.pointee.ai_family, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { lastError = failure("socket", "\(host):\(port)"); continue }
            let s = Socket(descriptor: fd, label: "\(host):\(port)")
            // Non-blocking connect, bounded by poll; then back to blocking mode.
            let flags = fcntl(fd, F_GETFL)
            _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
            var status = Glibc.connect(fd, address.pointee.ai_addr, address.pointee.ai_addrlen)
            if status != 0, errno == EINPROGRESS {
                var descriptor = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                if poll(&descriptor, 1, milliseconds(timeout)) == 1 {
                    var code: Int32 = 0
                    var length = socklen_t(MemoryLayout<Int32>.size)
                    getsockopt(fd, SOL_SOCKET, SO_ERROR, &code, &length)
                    status = code == 0 ? 0 : -1
                    errno = code
                } else {
                    errno = ETIMEDOUT
                }
            }
            guard status == 0 else { lastError = failure("connect", s.label); s.close(); continue }
            _ = fcntl(fd, F_SETFL, flags)
            s.setNoDelay()
            return s
        }
        throw lastError
    }

    /// Bounds every later blocking send and receive on this socket: a peer that stops reading or
    /// stops mid-frame makes the call fail with a timeout instead of hanging. `nil` waits forever.
    public func setIOTimeout(_ timeout: Duration?) {
        let ms = timeout.map(Self.milliseconds) ?? 0
        var value = timeval(tv_sec: Int(ms / 1000), tv_usec: Int(ms % 1000) * 1000)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(descriptor, SOL_SOCKET, SO_SNDTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Bounds later blocking sends only: receives keep waiting (an idle client is not an error).
    public func setSendTimeout(_ timeout: Duration) {
        let ms = Self.milliseconds(timeout)
        var value = timeval(tv_sec: Int(ms / 1000), tv_usec: Int(ms % 1000) * 1000)
        setsockopt(descriptor, SOL_SOCKET, SO_SNDTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
    }

    static func milliseconds(_ duration: Duration) -> Int32 {
        Int32(clamping: max(1, duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000))
    }

    /// Waits for the next connection; it has `TCP_NODELAY` set.
    public func accept() throws -> Socket {
        while true {
            let fd = Glibc.accept(descriptor, nil, nil)
            if fd >= 0 {
                let s = Socket(descriptor: fd, label: "client of \(label)")
                s.setNoDelay()
                return s
            }
            if errno == EINTR { continue }
            throw Self.failure("accept", label)
        }
    }

    /// The port this socket is bound to.
    public var localPort: Int {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) } }
        let family = storage.ss_family
        return withUnsafePointer(to: &storage) { pointer in
            if family == sa_family_t(AF_INET6) {
                return pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin6_port)) }
            }
            return pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) }
        }
    }

    /// Reads exactly `buffer.count` bytes; false if the peer closed the connection before the first byte.
    public func readExactly(_ buffer: UnsafeMutableRawBufferPointer) throws -> Bool {
        var done = 0
        while done < buffer.count {
            let n = recv(descriptor, buffer.baseAddress! + done, buffer.count - done, 0)
            if n > 0 { done += n; continue }
            if n == 0 {
                if done == 0 { return false }
                throw TransportError.system(operation: "recv (peer closed mid-frame)", path: label, errno: .connectionReset)
            }
            if errno == EINTR { continue }
            throw Self.failure("recv", label)
        }
        return true
    }

    /// Writes all of `bytes`.
    public func writeAll(_ bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < bytes.count {
            let n = send(descriptor, bytes.baseAddress! + done, bytes.count - done, Int32(MSG_NOSIGNAL))
            if n > 0 { done += n; continue }
            if n < 0, errno == EINTR { continue }
            throw Self.failure("send", label)
        }
    }

    /// Writes all the bytes of `parts`, in order, with as few system calls as the kernel allows
    /// (`sendmsg` with `MSG_NOSIGNAL`, up to 1024 parts a call, Linux's `UIO_MAXIOV`): a frame goes
    /// out from where its pieces already are, without being copied together first. `parts` is
    /// consumed as it is written.
    public func writeAll(_ parts: inout [iovec]) throws {
        var first = 0
        while first < parts.count {
            let count = min(parts.count - first, 1024)
            let n = parts.withUnsafeMutableBufferPointer { buffer in
                var message = msghdr()
                message.msg_iov = buffer.baseAddress! + first
                message.msg_iovlen = count
                return sendmsg(descriptor, &message, Int32(MSG_NOSIGNAL))
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw Self.failure("sendmsg", label)
            }
            var written = n
            while written > 0, first < parts.count {
                let length = parts[first].iov_len
                if written >= length {
                    written -= length
                    first += 1
                } else {
                    parts[first].iov_base = parts[first].iov_base! + written
                    parts[first].iov_len = length - written
                    written = 0
                }
            }
            while first < parts.count, parts[first].iov_len == 0 { first += 1 }
        }
    }

    /// Stops further reads and writes; a thread blocked in `recv` or `accept` returns.
    public func shutdown() {
        lifecycle.lock()
        defer { lifecycle.unlock() }
        if !closed { _ = Glibc.shutdown(descriptor, Int32(SHUT_RDWR)) }
    }

    /// Closes the descriptor. Safe to call twice.
    public func close() {
        lifecycle.lock()
        defer { lifecycle.unlock() }
        guard !closed else { return }
        closed = true
        _ = Glibc.close(descriptor)
    }

    /// Detects a peer that vanished (host down, cable cut) on an idle connection: TCP keepalive
    /// probes after `idle`, every `interval`, given up after `probes`; and unacknowledged data
    /// fails the connection after `idle + interval * probes`.
    public func enableKeepalive(idle: Int32 = 10, interval: Int32 = 5, probes: Int32 = 3) {
        var on: Int32 = 1, idle = idle, interval = interval, probes = probes
        var userTimeout = UInt32((idle + interval * probes) * 1000)
        let size = socklen_t(MemoryLayout<Int32>.size)
        setsockopt(descriptor, SOL_SOCKET, SO_KEEPALIVE, &on, size)
        setsockopt(descriptor, Int32(IPPROTO_TCP), TCP_KEEPIDLE, &idle, size)
        setsockopt(descriptor, Int32(IPPROTO_TCP), TCP_KEEPINTVL, &interval, size)
        setsockopt(descriptor, Int32(IPPROTO_TCP), TCP_KEEPCNT, &probes, size)
        setsockopt(descriptor, Int32(IPPROTO_TCP), TCP_USER_TIMEOUT, &userTimeout, socklen_t(MemoryLayout<UInt32>.size))
    }

    deinit {
        assert(closed, "Socket \(label) was not closed")
        if !closed { _ = Glibc.close(descriptor) }
    }

    private func setNoDelay() {
        var one: Int32 = 1
        setsockopt(descriptor, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    private static func failure(_ operation: String, _ label: String) -> TransportError {
        .system(operation: operation, path: label, errno: Errno(rawValue: errno))
    }

    private static func resolve(host: String, port: Int, passive: Bool) throws -> UnsafeMutablePointer<addrinfo> {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        if passive { hints.ai_flags = AI_PASSIVE }
        var result: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &result)
        guard status == 0, let result else {
            throw TransportError.unreachable(address: "\(host):\(port)", reason: "cannot resolve: \(String(cString: gai_strerror(status)))")
        }
        return result
    }
}
