import Foundation
import Platform

/// A real client (kubectl, python) run as a child process against the test API server. Nothing
/// here blocks a Swift concurrency thread: the pool has as few threads as the machine has cores,
/// and the test API server in this same process needs them to answer the child.
struct ClientProcess {
    struct Output {
        let status: Int32
        let stdout: String
        let stderr: String
        var combined: String { stdout + stderr }
    }

    /// The absolute path of `name` on PATH, if any.
    static func find(_ name: String) -> String? {
        for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
            let path = "\(directory)/\(name)"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return nil
    }

    /// Runs to completion (terminated after `timeout`).
    static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                    timeout: Duration = .seconds(90)) async throws -> Output {
        let child = try StreamingProcess(executable, arguments, environment: environment, mergeOutput: false)
        let killer = Task {
            try await Task.sleep(for: timeout)
            child.terminate()
        }
        let status = await child.exitStatus()
        killer.cancel()
        return Output(status: status, stdout: child.output, stderr: child.errorOutput)
    }
}

/// A child process whose output is collected as it comes (by a reader thread per stream), for
/// `kubectl get -w` and Python electors as well as one-shot commands.
final class StreamingProcess: @unchecked Sendable {
    /// Dies with the test process (parent-death signal) and starts with default signal
    /// dispositions, so a test run never leaves it behind.
    private var process: ChildProcess!
    private let lock = NSLock()
    private var stdout = Data()
    private var stderr = Data()
    private var openStreams = 2
    private var status: Int32?
    private var exitWaiters: [CheckedContinuation<Int32, Never>] = []

    /// `mergeOutput`: stderr is collected with stdout.
    init(_ executable: String, _ arguments: [String], environment: [String: String] = [:], mergeOutput: Bool = true) throws {
        let out = Pipe(), err = Pipe()
        let child = try ChildProcess(executable: executable, arguments: arguments,
                                     environment: ProcessInfo.processInfo.environment.merging(environment) { $1 },
                                     standardOutput: .pipe(out), standardError: .pipe(err))
        process = child
        // Blocking reads on threads of their own, not Foundation's readabilityHandler: a handler
        // whose file handle is released closes the descriptor without ever seeing end of file,
        // and the waiter for the exit then waits forever (seen as a hung suite in CI).
        for (pipe, toError) in [(out, false), (err, !mergeOutput)] {
            // The thread holds the pipe (so its descriptor) until end of file, and this object
            // only weakly: dropping it still terminates the child (deinit).
            let reader = Thread { [weak self, pipe] in
                let descriptor = pipe.fileHandleForReading.fileDescriptor
                var buffer = [UInt8](repeating: 0, count: 65536)
                while true {
                    let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
                    if count < 0, errno == EINTR { continue }
                    guard count > 0 else { break }
                    self?.append(buffer[..<count], toError: toError)
                }
                self?.streamEnded()
            }
            reader.stackSize = 1 << 20
            reader.start()
        }
        Thread { [weak self] in
            let code = child.waitUntilExit()
            self?.exited(code)
        }.start()
    }

    private func append(_ bytes: ArraySlice<UInt8>, toError: Bool) {
        lock.withLock { if toError { stderr.append(contentsOf: bytes) } else { stdout.append(contentsOf: bytes) } }
    }

    private func streamEnded() {
        lock.withLock { openStreams -= 1 }
        resumeIfDone()
    }

    private func exited(_ code: Int32) {
        lock.withLock { status = code }
        resumeIfDone()
    }

    /// Exit waiters are resumed once the process ended and both pipes reached end of file.
    private func resumeIfDone() {
        let (waiters, code): ([CheckedContinuation<Int32, Never>], Int32) = lock.withLock {
            guard let status, openStreams == 0 else { return ([], 0) }
            defer { exitWaiters.removeAll() }
            return (exitWaiters, status)
        }
        for waiter in waiters { waiter.resume(returning: code) }
    }

    /// Waits for the exit status (and all output).
    func exitStatus() async -> Int32 {
        await withCheckedContinuation { continuation in
            let done: Int32? = lock.withLock {
                if let status, openStreams == 0 { return status }
                exitWaiters.append(continuation)
                return nil
            }
            if let done { continuation.resume(returning: done) }
        }
    }

    var output: String { lock.withLock { String(decoding: stdout, as: UTF8.self) } }
    var errorOutput: String { lock.withLock { String(decoding: stderr, as: UTF8.self) } }

    func terminate() { process.terminate() }

    /// Terminates the process (if running) and waits for it.
    func stop() async {
        terminate()
        _ = await exitStatus()
    }

    deinit { process.terminate() }
}
