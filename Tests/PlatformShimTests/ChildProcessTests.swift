import Foundation
import MoE
import Platform
import Testing

/// Child processes: exit statuses, default signal dispositions, and only stdio inherited.
@Suite("Child processes")
struct ChildProcessTests {
    @Test("An exit code and a fatal signal are reported as the status (128 + signal)")
    func statuses() throws {
        let done = try ChildProcess(executable: "/bin/sh", arguments: ["-c", "exit 3"])
        #expect(done.waitUntilExit() == 3)
        let killed = try ChildProcess(executable: "/bin/sleep", arguments: ["30"])
        #expect(killed.isRunning)
        killed.kill()
        #expect(killed.waitUntilExit() == 128 + SIGKILL)
        #expect(throws: ChildProcessError.self) { try ChildProcess(executable: "/nonexistent/program", arguments: []) }
    }

    /// `eaas up` starts pods while its attention worker computes: a `fork()` then runs OpenBLAS's
    /// atfork handler, which joins the BLAS thread pool and waits forever for a call in progress
    /// (the local kubelet froze with a pod half started). The spawn must not run atfork handlers.
    @Test("Children start while another thread is inside a multi-threaded BLAS call")
    func spawnDuringBLAS() throws {
        final class Flag: @unchecked Sendable {
            private let lock = NSLock()
            private var value = false
            var isSet: Bool { lock.withLock { value } }
            func set() { lock.withLock { value = true } }
        }
        let stop = Flag()
        let computing = DispatchSemaphore(value: 0)
        let computed = DispatchSemaphore(value: 0)
        let blas = Thread {
            let n = 384
            let a = [Float](repeating: 0.5, count: n * n), b = [Float](repeating: 0.25, count: n * n)
            var c = [Float](repeating: 0, count: n * n)
            var first = true
            while !stop.isSet {
                a.withUnsafeBufferPointer { a in
                    b.withUnsafeBufferPointer { b in
                        c.withUnsafeMutableBufferPointer { c in
                            BLAS.gemm(m: n, n: n, k: n, a: a.baseAddress!, lda: n, b: b.baseAddress!, ldb: n, c: c.baseAddress!, ldc: n)
                        }
                    }
                }
                if first { computing.signal(); first = false }
            }
            computed.signal()
        }
        blas.start()
        computing.wait()
        // The spawns run on a thread of their own, so that a hang fails the test instead of the run.
        let spawned = DispatchSemaphore(value: 0)
        let statuses = StatusList()
        Thread {
            for _ in 0..<40 { statuses.append((try? ChildProcess(executable: "/bin/true", arguments: []))?.waitUntilExit()) }
            spawned.signal()
        }.start()
        let finished = spawned.wait(timeout: .now() + 60) == .success
        stop.set()
        #expect(finished, "a child could not be started while BLAS computed (\(statuses.count) of 40 started)")
        if finished {
            #expect(statuses.all == Array(repeating: 0, count: 40))
            computed.wait()
        }
    }

    final class StatusList: @unchecked Sendable {
        private let lock = NSLock()
        private var values: [Int32?] = []
        func append(_ value: Int32?) { lock.withLock { values.append(value) } }
        var count: Int { lock.withLock { values.count } }
        var all: [Int32?] { lock.withLock { values } }
    }

    @Test("A child starts with SIGTERM at its default action even when this process ignores it")
    func defaultDispositions() throws {
        let previous = signal(SIGTERM, SIG_IGN)
        defer { signal(SIGTERM, previous) }
        // The shell sends itself SIGTERM: with an inherited SIG_IGN it would go on and exit 0.
        let child = try ChildProcess(executable: "/bin/sh", arguments: ["-c", "kill -TERM $$; exit 0"])
        #expect(child.waitUntilExit() == 128 + SIGTERM)
    }

    @Test("Only descriptors 0, 1 and 2 reach the child; stdout through a pipe ends at its exit")
    func descriptors() throws {
        let leaked = open("/dev/null", O_RDONLY)  // not close-on-exec
        defer { close(leaked) }
        let output = Pipe()
        let child = try ChildProcess(executable: "/bin/sh", arguments: ["-c", "ls /proc/self/fd"], standardOutput: .pipe(output))
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(child.waitUntilExit() == 0)
        let fds = Set(text.split(separator: "\n").compactMap { Int($0) })
        // ls itself opens one descriptor for the directory it lists.
        #expect(fds.subtracting([0, 1, 2]).count <= 1, "\(fds.sorted())")
        #expect(!fds.contains(Int(leaked)) || Int(leaked) <= 3)
    }
}
