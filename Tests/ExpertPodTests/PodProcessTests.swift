import Foundation
import Platform
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Testing
import Transport

/// `eaas expert-pod` as a process: what it says on HTTP, and how it leaves on SIGTERM.
@Suite("Expert pod process", .serialized)
struct PodProcessTests {
    static let binary: String = {
        var directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        if directory.lastPathComponent.hasSuffix(".xctest") { directory = directory.deletingLastPathComponent() }
        return directory.appendingPathComponent("eaas").path
    }()

    final class Pod: @unchecked Sendable {
        private(set) var process: ChildProcess!
        let errors = Pipe()
        var dataPort = 0
        var metricsPort = 0

        init(shard: String, extra: [String] = []) throws {
            let arguments = ["expert-pod", "--model", PodFixture.directory, "--shard", shard, "--listen", "127.0.0.1:0",
                                 "--metrics-host", "127.0.0.1", "--metrics-port", "0", "--wire-dtype", "f32", "--max-batch-tokens", "64",
                                 "--log-level", "warning"] + extra
            let out = Pipe()
            process = try ChildProcess(executable: PodProcessTests.binary, arguments: arguments, environment: ["EAAS_POOL_TOKEN": "pod"],
                                       standardOutput: .pipe(out), standardError: .pipe(errors))
            var line = Data()
            while !line.contains(UInt8(ascii: "\n")) {
                let chunk = out.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                line.append(chunk)
            }
            // "listening 127.0.0.1:PORT metrics 127.0.0.1:PORT"
            let words = String(decoding: line, as: UTF8.self).split(whereSeparator: \.isWhitespace)
            guard words.count == 4, let data = Int(words[1].split(separator: ":").last ?? ""), let metrics = Int(words[3].split(separator: ":").last ?? "") else {
                process.terminate()
                throw TransportError.unreachable(address: "expert-pod", reason: "did not start: \(String(decoding: line, as: UTF8.self))")
            }
            dataPort = data
            metricsPort = metrics
        }

        func get(_ path: String) async throws -> (Int, String) {
            let (body, response) = try await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(metricsPort)/\(path)")!)
            return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: body, as: UTF8.self))
        }

        func exit() -> (Int32, String) {
            process.waitUntilExit()
            return (process.terminationStatus, String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
        }

        func cleanUp() {
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        DataPlaneServer.removeRegions(leftBy: process.pid)
        }
    }

    @Test("HTTP says healthy, ready, which shard, and counts each expert's tokens in /metrics")
    func http() async throws {
        let pod = try Pod(shard: "2,5@0")
        defer { pod.cleanUp() }
        #expect(try await pod.get("healthz") == (200, "ok\n"))
        #expect(try await pod.get("readyz") == (200, "ready\n"))
        let (_, shardJSON) = try await pod.get("v1/shard")
        let shard = try JSONSerialization.jsonObject(with: Data(shardJSON.utf8)) as? [String: Any]
        #expect(shard?["shard"] as? String == "2,5@0")
        #expect(shard?["hidden_size"] as? Int == PodFixture.hidden)
        #expect((shard?["experts"] as? [[String: Int]])?.map { [$0["layer"]!, $0["expert"]!] } == [[0, 2], [0, 5]])

        let connection = try FrameConnection.connect(host: "127.0.0.1", port: pod.dataPort)
        defer { connection.close() }
        try connection.write(FrameEncoder.encode(Handshake(clientID: 1, maxBatchTokens: 8, poolToken: Array("pod".utf8))))
        _ = try connection.readFrame()
        try connection.write(podRequest(sequence: 1, layer: 0, ids: [2, 5, 2, RequestHeader.emptySlot], weights: [0.5, 0.5, 1, 0],
                                        states: PodFixture.states(tokens: 2, seed: 1), slots: 2))
        guard case .response = try Frame.decode(try #require(try connection.readFrame())) else { Issue.record("no response"); return }
        try connection.write(podRequest(sequence: 2, layer: 0, ids: [3], weights: [1], states: PodFixture.states(tokens: 1, seed: 2), slots: 1))
        guard case .error = try Frame.decode(try #require(try connection.readFrame())) else { Issue.record("no error"); return }

        let (status, metrics) = try await pod.get("metrics")
        #expect(status == 200)
        #expect(metrics.contains(#"eaas_expert_tokens_total{layer="0",expert="2"} 2"#), "\(metrics)")
        #expect(metrics.contains(#"eaas_expert_tokens_total{layer="0",expert="5"} 1"#))
        #expect(metrics.contains("eaas_requests_total 2"))
        #expect(metrics.contains(#"eaas_request_errors_total{code="unknownExpert"} 1"#))
        #expect(metrics.contains("eaas_batch_tokens_bucket"))
        #expect(metrics.contains("eaas_request_latency_seconds_bucket"))
        #expect(metrics.contains("eaas_busy_seconds_total"))
        #expect(metrics.contains("eaas_queue_depth"))
    }

    @Test("SIGTERM: readyz turns 503, the client gets GOAWAY, in-flight work is answered, the pod exits 0")
    func sigterm() async throws {
        let pod = try Pod(shard: "0-7", extra: ["--grace-seconds", "10"])
        defer { pod.cleanUp() }
        let connection = try FrameConnection.connect(host: "127.0.0.1", port: pod.dataPort)
        defer { connection.close() }
        try connection.write(FrameEncoder.encode(Handshake(clientID: 1, maxBatchTokens: 8, poolToken: Array("pod".utf8))))
        _ = try connection.readFrame()
        kill(pod.process.processIdentifier, SIGTERM)
        guard case .goAway(let goAway) = try Frame.decode(try #require(try connection.readFrame())) else { Issue.record("no GOAWAY"); return }
        #expect(goAway.reason.contains("SIGTERM"))
        // Work sent before the client moved away is still answered (sent at once: a connection
        // still idle when the drain settles, 2 s on, is closed).
        try connection.write(podRequest(sequence: 1, layer: 1, ids: [1, 6], weights: [0.5, 0.5], states: PodFixture.states(tokens: 1, seed: 3), slots: 2))
        guard case .response(let response) = try Frame.decode(try #require(try connection.readFrame())) else { Issue.record("in-flight work lost"); return }
        #expect(response.header.sequence == 1)
        #expect(try await pod.get("readyz").0 == 503)
        let started = ContinuousClock.now
        connection.close()
        let (status, stderr) = pod.exit()
        #expect(status == 0, "\(stderr)")
        #expect(ContinuousClock.now - started < .seconds(5), "the pod leaves as soon as its last client did")
    }

    @Test("Nothing on the metrics port changes the pod: GET /drain is 404 and the pod keeps serving")
    func metricsPortReadOnly() async throws {
        let pod = try Pod(shard: "0-1")
        defer { pod.cleanUp() }
        for path in ["drain", "v1/drain", "shutdown"] { #expect(try await pod.get(path).0 == 404) }
        #expect(try await pod.get("readyz") == (200, "ready\n"))
        let connection = try FrameConnection.connect(host: "127.0.0.1", port: pod.dataPort)
        defer { connection.close() }
        try connection.write(FrameEncoder.encode(Handshake(clientID: 1, maxBatchTokens: 8, poolToken: Array("pod".utf8))))
        guard case .handshakeReply = try Frame.decode(try #require(try connection.readFrame())) else { Issue.record("not served"); return }
    }

    @Test("The preStop drain goes through the local socket (mode 0600): the client gets GOAWAY, eaas drain returns, the pod exits 0")
    func drainSocket() async throws {
        let socketPath = NSTemporaryDirectory() + "eaas-drain-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let pod = try Pod(shard: "0-1", extra: ["--grace-seconds", "10", "--drain-socket", socketPath])
        defer { pod.cleanUp() }
        var info = stat()
        #expect(stat(socketPath, &info) == 0 && info.st_mode & 0o777 == 0o600, "socket mode \(String(info.st_mode & 0o777, radix: 8))")
        let connection = try FrameConnection.connect(host: "127.0.0.1", port: pod.dataPort)
        try connection.write(FrameEncoder.encode(Handshake(clientID: 1, maxBatchTokens: 8, poolToken: Array("pod".utf8))))
        _ = try connection.readFrame()
        let drain = try ChildProcess(executable: PodProcessTests.binary, arguments: ["drain", "--socket", socketPath, "--timeout-seconds", "20"],
                                     standardOutput: .null)
        guard case .goAway(let goAway) = try Frame.decode(try #require(try connection.readFrame())) else { Issue.record("no GOAWAY"); return }
        #expect(goAway.reason.contains("preStop"))
        #expect(try await pod.get("readyz").0 == 503)
        connection.close()  // the client moves away
        #expect(await drain.exit(within: .seconds(15)) == 0, "eaas drain did not report a finished drain")
        // Drained, it cannot serve again: it exits instead of looking alive.
        let (status, stderr) = pod.exit()
        #expect(status == 0, "\(stderr)")
        #expect(!FileManager.default.fileExists(atPath: socketPath), "the drain socket is removed at exit")
        // With no pod behind it, eaas drain says so and fails.
        let missing = try ChildProcess(executable: PodProcessTests.binary, arguments: ["drain", "--socket", socketPath], standardOutput: .null, standardError: .null)
        #expect(missing.waitUntilExit() == 1)
    }
}

/// Commands that start processes leave none behind however they are stopped.
@Suite("No process left behind", .serialized)
struct ChildrenLeftBehindTests {
    /// Pids whose parent is `parent`, from /proc.
    static func children(of parent: Int32) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap(Int32.init).filter { pid in
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return false }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 2 && Int32(fields[1]) == parent
        }
    }

    static func alive(_ pid: Int32) -> Bool { kill(pid, 0) == 0 && !((try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8))?.contains(") Z ") ?? true) }

    @Test("eaas bench pod stopped by SIGTERM or killed by SIGKILL leaves no expert-pod or client process running", arguments: [SIGTERM, SIGKILL])
    func benchLeavesNothing(signal: Int32) async throws {
        let log = NSTemporaryDirectory() + "eaas-bench-pod-\(UUID().uuidString).log"
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: log) }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        let bench = try ChildProcess(executable: PodProcessTests.binary,
                                     arguments: ["bench", "pod", "--model", PodFixture.directory, "--shard", "0-7", "--clients", "2", "--seconds", "600"],
                                     environment: ProcessInfo.processInfo.environment.merging(["EAAS_POOL_TOKEN": "bench-token-0123456789"]) { $1 },
                                     standardOutput: .null, standardError: .handle(handle))
        try? handle.close()
        defer { bench.kill(); bench.waitUntilExit() }
        var started: [Int32] = []
        // Generous: on a machine the rest of the suite loads, a debug binary starts slowly, and this
        // task may not run for a minute while synchronous tests hold the pool's threads (a CI run
        // once looked only after a 60-second bench had ended). The bench outlives any such wait:
        // the signal below ends it.
        let deadline = ContinuousClock.now + .seconds(180)
        while started.count < 3, ContinuousClock.now < deadline, bench.isRunning {  // the pod and two clients
            started = Self.children(of: bench.pid)
            try await Task.sleep(for: .milliseconds(100))
        }
        let stderr = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        try #require(started.count >= 3, "the benchmark did not start its processes (\(started), exit \(bench.exitStatus.map(String.init) ?? "none yet")): \(stderr.suffix(2000))")
        bench.send(signal)
        _ = await bench.exit(within: .seconds(30))
        let gone = ContinuousClock.now + .seconds(30)
        while started.contains(where: Self.alive), ContinuousClock.now < gone { try await Task.sleep(for: .milliseconds(100)) }
        #expect(!started.contains(where: Self.alive), "left running: \(started.filter(Self.alive))")
        for pid in started { DataPlaneServer.removeRegions(leftBy: pid) }
    }
}
