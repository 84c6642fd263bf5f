import Foundation

/// A pod as the local runtime starts it: the container's command line with volume paths
/// rewritten to local directories, and a loopback address of its own.
public struct LocalPod: Sendable {
    public var name: String
    public var namespace: String
    /// A distinct 127/8 address: every pod binds the ports its spec names on its own IP, as in a cluster.
    public var ip: String
    /// The container's args (after the image's entrypoint, `eaas`), paths already local.
    public var args: [String]
    public var environment: [String: String]
    /// A directory of the pod's own (logs, materialized Secret volumes).
    public var directory: String
}

/// Starts the container of a local pod. The runtime uses `ProcessLauncher` (real `eaas`
/// processes); tests use launchers of their own.
public protocol PodLauncher: Sendable {
    func launch(_ pod: LocalPod) throws -> any LaunchedContainer
}

/// A running container.
public protocol LaunchedContainer: AnyObject, Sendable {
    /// The exit status once it has exited (a signal as 128 + its number).
    var exitStatus: Int32? { get }
    /// SIGTERM, then SIGKILL after `grace` if it is still running; returns once it has exited.
    func terminate(grace: Duration) async
    /// SIGKILL now.
    func kill()
}

/// Runs containers as child processes of an executable (the `eaas` binary itself).
public struct ProcessLauncher: PodLauncher {
    public var executable: String
    public init(executable: String) { self.executable = executable }

    public func launch(_ pod: LocalPod) throws -> any LaunchedContainer {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = pod.args
        var environment = ProcessInfo.processInfo.environment
        for (key, value) in pod.environment { environment[key] = value }
        process.environment = environment
        let log = pod.directory + "/container.log"
        guard FileManager.default.createFile(atPath: log, contents: nil) else { throw LocalRuntimeError("cannot create \(log)") }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        // The pod exits when its runtime dies, even by SIGKILL (it watches for this parent).
        process.environment?["EAAS_PARENT_PID"] = String(getpid())
        let container = ChildContainer(process: process, log: handle)  // sets the termination handler before the start
        try process.run()
        return container
    }
}

/// A child process as a container.
final class ChildContainer: LaunchedContainer, @unchecked Sendable {
    private let process: Process
    private let log: FileHandle
    private let lock = NSLock()
    private var status: Int32?

    init(process: Process, log: FileHandle) {
        self.process = process
        self.log = log
        process.terminationHandler = { [weak self] process in
            guard let self else { return }
            let code = process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
            lock.withLock { status = code }
            try? log.close()
        }
    }

    var exitStatus: Int32? {
        if let status = lock.withLock({ status }) { return status }
        // The handler runs a little after the exit; a process that is gone is gone either way.
        return process.isRunning || process.processIdentifier == 0 ? nil : process.terminationStatus
    }

    func terminate(grace: Duration) async {
        guard exitStatus == nil else { return }
        process.terminate()
        let deadline = ContinuousClock.now + grace
        while exitStatus == nil, ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(50)) }
        if exitStatus == nil {
            kill()
            let killed = ContinuousClock.now
            while exitStatus == nil, ContinuousClock.now - killed < .seconds(10) { try? await Task.sleep(for: .milliseconds(20)) }
        }
    }

    func kill() {
        guard exitStatus == nil else { return }
        Foundation.kill(process.processIdentifier, SIGKILL)
    }
}
