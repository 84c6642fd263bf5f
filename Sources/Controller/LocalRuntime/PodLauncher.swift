import Foundation
import Platform
import Transport

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
    /// The container's preStop `exec` command, paths already local (`eaas` is this binary).
    public var preStopCommand: [String]?
    /// emptyDir volumes' local directories, removed when the pod is gone.
    public var scratchDirectories: [String]
    /// The cgroup the container runs in (its CPU limit as a CFS quota); nil where none is written.
    public var cpuGroup: CPUControlGroup?
    /// `resources.limits.cpu` in CPUs (nil: none), however it is enforced.
    public var cpuLimit: Double?

    public init(name: String, namespace: String, ip: String, args: [String], environment: [String: String], directory: String,
                preStopCommand: [String]? = nil, scratchDirectories: [String] = []) {
        self.scratchDirectories = scratchDirectories
        self.name = name
        self.namespace = namespace
        self.ip = ip
        self.args = args
        self.environment = environment
        self.directory = directory
        self.preStopCommand = preStopCommand
    }
}

/// Starts the container of a local pod. The runtime uses `ProcessLauncher` (real `eaas`
/// processes); tests use launchers of their own.
public protocol PodLauncher: Sendable {
    func launch(_ pod: LocalPod) throws -> any LaunchedContainer
    /// Runs a hook `command` of `pod`'s container (a preStop `exec`) to its end, at most
    /// `timeout`; its exit status, or nil when it timed out (it is killed) or could not start.
    func runHook(_ pod: LocalPod, command: [String], timeout: Duration) async -> Int32?
}

extension PodLauncher {
    /// Launchers whose containers have no hooks to run.
    public func runHook(_ pod: LocalPod, command: [String], timeout: Duration) async -> Int32? { nil }
}

/// A running container.
public protocol LaunchedContainer: AnyObject, Sendable {
    /// The exit status once it has exited (a signal as 128 + its number).
    var exitStatus: Int32? { get }
    /// Its process, where it is one (for CPU accounting without a cgroup).
    var pid: Int32? { get }
    /// SIGTERM, then SIGKILL after `grace` if it is still running; returns once it has exited.
    func terminate(grace: Duration) async
    /// SIGKILL now.
    func kill()
    /// Releases what the container's process may have left on the host (a SIGKILLed expert pod's
    /// shared slot region); called once it has exited.
    func cleanUp()
}

extension LaunchedContainer {
    public func cleanUp() {}
    public var pid: Int32? { nil }
}

/// Runs containers as child processes of an executable (the `eaas` binary itself). They get
/// SIGTERM from the kernel when this process dies, even by SIGKILL, and start with default
/// signal dispositions and no descriptors of this process but their log.
public struct ProcessLauncher: PodLauncher {
    public var executable: String
    public init(executable: String) { self.executable = executable }

    public func launch(_ pod: LocalPod) throws -> any LaunchedContainer {
        var environment = ProcessInfo.processInfo.environment
        for (key, value) in pod.environment { environment[key] = value }
        let log = pod.directory + "/container.log"
        guard FileManager.default.createFile(atPath: log, contents: nil) else { throw LocalRuntimeError("cannot create \(log)") }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        defer { try? handle.close() }
        let child = try ChildProcess(executable: executable, arguments: pod.args, environment: environment,
                                     standardOutput: .handle(handle), standardError: .handle(handle), cpuGroup: pod.cpuGroup)
        return ChildContainer(process: child)
    }

    public func runHook(_ pod: LocalPod, command: [String], timeout: Duration) async -> Int32? {
        guard let first = command.first else { return nil }
        var environment = ProcessInfo.processInfo.environment
        for (key, value) in pod.environment { environment[key] = value }
        guard let log = FileHandle(forWritingAtPath: pod.directory + "/container.log") else { return nil }
        defer { try? log.close() }
        log.seekToEndOfFile()
        // The image's `eaas` is this executable.
        let path = first == "eaas" || first.hasSuffix("/eaas") ? executable : first
        guard let hook = try? ChildProcess(executable: path, arguments: Array(command.dropFirst()), environment: environment,
                                           standardOutput: .handle(log), standardError: .handle(log)) else { return nil }
        if let status = await hook.exit(within: timeout) { return status }
        hook.kill()
        hook.waitUntilExit()
        return nil
    }
}

/// A child process as a container.
final class ChildContainer: LaunchedContainer, @unchecked Sendable {
    private let process: ChildProcess

    init(process: ChildProcess) { self.process = process }

    var exitStatus: Int32? { process.exitStatus }

    var pid: Int32? { process.pid }

    func terminate(grace: Duration) async {
        guard exitStatus == nil else { return }
        process.terminate()
        if await process.exit(within: grace) != nil { return }
        kill()
        _ = await process.exit(within: .seconds(10))
    }

    func kill() { process.kill() }

    func cleanUp() {
        guard process.exitStatus != nil else { return }
        DataPlaneServer.removeRegions(leftBy: process.pid)
    }
}
