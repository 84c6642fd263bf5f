import Foundation
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
