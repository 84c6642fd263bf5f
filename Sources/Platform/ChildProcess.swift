import CPlatform
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A child process that cannot outlive its parent and inherits nothing it should not.
///
/// Every process EaaS starts (pods under `eaas up` and the benchmarks, servers and clients in
/// tests) goes through this, because Foundation's `Process` leaves three things to chance:
/// - the child gets `parentDeathSignal` (SIGTERM by default) when this process dies, even by
///   SIGKILL, so nothing is left running with its parent gone (the kernel's parent-death signal,
///   not an environment variable the child must know to watch);
/// - every signal disposition is back to default and the mask is empty: a parent that ignores
///   SIGTERM to handle it itself (as swift-service-lifecycle does) no longer hands a child an
///   ignored SIGTERM;
/// - only descriptors 0–2 are inherited (no listening sockets or shared regions of the parent).
///
/// The parent-death signal fires when the *thread* that forked exits, so every fork happens on
/// one thread kept for the life of the process.
public final class ChildProcess: @unchecked Sendable {
    /// Where a standard stream of the child goes.
    public enum Stream {
        /// This process's own.
        case inherit
        /// `/dev/null`.
        case null
        /// An open file or pipe end (this process keeps its copy).
        case handle(FileHandle)
        /// The write end (stdout/stderr) or read end (stdin) of `pipe`; this process closes its
        /// copy of that end once the child has it, so the other end sees EOF when the child exits.
        case pipe(Pipe)
    }

    public let pid: Int32
    public let executable: String
    private let lock = NSLock()
    private let exited = DispatchSemaphore(value: 0)
    private var status: Int32?

    /// Starts `executable` with `arguments`; `environment` replaces this process's (nil: inherit it).
    /// With `cpuGroup` the child joins that group before it execs.
    public init(executable: String, arguments: [String], environment: [String: String]? = nil,
                standardInput: Stream = .null, standardOutput: Stream = .inherit, standardError: Stream = .inherit,
                parentDeathSignal: Int32 = SIGTERM, cpuGroup: CPUControlGroup? = nil) throws {
        self.executable = executable
        let environment = environment ?? ProcessInfo.processInfo.environment
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { if null >= 0 { close(null) } }
        func descriptor(_ stream: Stream, input: Bool) -> Int32 {
            switch stream {
            case .inherit: return input ? 0 : -1
            case .null: return null
            case .handle(let handle): return handle.fileDescriptor
            case .pipe(let pipe): return input ? pipe.fileHandleForReading.fileDescriptor : pipe.fileHandleForWriting.fileDescriptor
            }
        }
        let fds = (descriptor(standardInput, input: true), descriptor(standardOutput, input: false), descriptor(standardError, input: false))
        let argv = [executable] + arguments
        let envp = environment.map { "\($0.key)=\($0.value)" }
        let groupFiles: [Int32]
        do { groupFiles = try cpuGroup?.openProcessFiles() ?? [] } catch { throw ChildProcessError("cannot start \(executable) in its CPU group: \(error)") }
        defer { groupFiles.forEach { close($0) } }
        let result = Spawner.shared.run {
            withCStrings(argv) { argvPointers in
                withCStrings(envp) { envPointers in
                    groupFiles.withUnsafeBufferPointer { groups in
                        let pid = eaas_spawn(executable, argvPointers, envPointers, fds.0, fds.1 == -1 ? 1 : fds.1, fds.2 == -1 ? 2 : fds.2,
                                             parentDeathSignal, groups.baseAddress, Int32(groups.count))
                        return (pid, errno)
                    }
                }
            }
        }
        guard result.0 > 0 else {
            throw ChildProcessError("cannot start \(executable): \(String(cString: strerror(result.1)))")
        }
        pid = result.0
        // This process's copies of the child's pipe ends: closed, so EOF follows the child's exit.
        if case .pipe(let pipe) = standardOutput { try? pipe.fileHandleForWriting.close() }
        if case .pipe(let pipe) = standardError, !Self.sameWriteEnd(standardOutput, standardError) { try? pipe.fileHandleForWriting.close() }
        if case .pipe(let pipe) = standardInput { try? pipe.fileHandleForReading.close() }
        let pid = self.pid
        let reaper = Thread { [self] in
            var raw: Int32 = 0
            while waitpid(pid, &raw, 0) < 0, errno == EINTR {}
            // WIFEXITED / WTERMSIG by hand: the C macros are not visible to Swift.
            let signal = raw & 0x7f
            let code = signal == 0 ? (raw >> 8) & 0xff : 128 + signal
            lock.withLock { status = code }
            exited.signal()
        }
        reaper.start()
    }

    private static func sameWriteEnd(_ a: Stream, _ b: Stream) -> Bool {
        if case .pipe(let x) = a, case .pipe(let y) = b { return x === y }
        return false
    }

    /// The exit status once the child has exited: its code, or 128 + the signal that ended it.
    public var exitStatus: Int32? { lock.withLock { status } }
    public var isRunning: Bool { exitStatus == nil }
    /// `pid`, under the name Foundation's `Process` gives it.
    public var processIdentifier: Int32 { pid }
    /// The exit status after `waitUntilExit()` (-1 while it runs), as on Foundation's `Process`.
    public var terminationStatus: Int32 { exitStatus ?? -1 }

    /// Sends `signal` unless the child has exited (and been reaped, so the pid is not reused).
    public func send(_ signal: Int32) {
        lock.withLock { if status == nil { _ = Glibc.kill(pid, signal) } }
    }

    public func terminate() { send(SIGTERM) }
    public func interrupt() { send(SIGINT) }
    public func kill() { send(SIGKILL) }

    /// Waits for the exit; returns the exit status.
    @discardableResult
    public func waitUntilExit() -> Int32 {
        if let status = exitStatus { return status }
        exited.wait()
        exited.signal()
        return exitStatus!
    }

    /// Waits at most `timeout`; the exit status, or nil while it still runs.
    public func wait(timeout: Duration) -> Int32? {
        if let status = exitStatus { return status }
        let nanoseconds = timeout.components.seconds * 1_000_000_000 + timeout.components.attoseconds / 1_000_000_000
        guard exited.wait(timeout: .now() + .nanoseconds(Int(clamping: nanoseconds))) == .success else { return nil }
        exited.signal()
        return exitStatus
    }

    /// Waits without blocking a thread of the concurrency pool (polls).
    public func exit(within timeout: Duration) async -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while exitStatus == nil, ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(10)) }
        return exitStatus
    }

    /// SIGTERM, then SIGKILL after `grace`; returns the exit status.
    @discardableResult
    public func stop(grace: Duration = .seconds(10)) -> Int32 {
        terminate()
        if let status = wait(timeout: grace) { return status }
        kill()
        return waitUntilExit()
    }
}

/// A child process that could not be started.
public struct ChildProcessError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// The one thread that forks (see `ChildProcess`): it never exits, so no child gets its
/// parent-death signal while this process lives.
final class Spawner: @unchecked Sendable {
    static let shared = Spawner()
    private let condition = NSCondition()
    private var work: [() -> Void] = []

    private init() {
        let thread = Thread { [self] in
            while true {
                condition.lock()
                while work.isEmpty { condition.wait() }
                let next = work.removeFirst()
                condition.unlock()
                next()
            }
        }
        thread.name = "eaas-spawner"
        thread.stackSize = 256 << 10
        thread.start()
    }

    /// Runs `body` on the spawner thread and returns its result.
    func run<T>(_ body: @escaping () -> T) -> T {
        let box = SpawnResult<T>()
        condition.lock()
        work.append {
            box.value = body()
            box.done.signal()
        }
        condition.signal()
        condition.unlock()
        box.done.wait()
        return box.value!
    }
}

private final class SpawnResult<T>: @unchecked Sendable {
    var value: T?
    let done = DispatchSemaphore(value: 0)
}

/// Calls `body` with a NULL-terminated C array of `strings`.
private func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    let pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) } + [nil]
    defer { pointers.forEach { free($0) } }
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}
