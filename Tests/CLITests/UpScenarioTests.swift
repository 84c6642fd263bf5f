import Foundation
import Platform
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Testing

/// `eaas up` as a user runs it: the embedded pool under a load that rises and falls, one expert
/// pod SIGKILLed on the way, Ctrl-C at the end. Reads the `--plain` table from a file, so no
/// concurrency thread ever blocks on a pipe.
@Suite("eaas up", .serialized)
struct UpScenarioTests {
    /// One shard row of the table: replicas, desired, ready.
    struct Row: Equatable {
        var replicas: Int
        var desired: Int
        var ready: Int
    }

    /// The last complete table in the output: shard → row.
    static func lastTable(_ text: String) -> [String: Row] {
        var table: [String: Row] = [:]
        var current: [String: Row] = [:]
        for line in text.split(separator: "\n") {
            if line.hasPrefix("SHARD") {
                if !current.isEmpty { table = current }
                current = [:]
                continue
            }
            let fields = line.split(separator: " ")
            guard fields.count >= 5, fields[0].hasPrefix("s"), let ready = Int(fields[3]) else { continue }
            let counts = fields[2].split(separator: "/").compactMap { Int($0) }
            guard counts.count == 2 else { continue }
            current[String(fields[0])] = Row(replicas: counts[0], desired: counts[1], ready: ready)
        }
        return current.isEmpty ? table : current
    }

    /// Expert pod processes whose parent is `parent`: pid → the experts they serve (`--shard`).
    static func podProcesses(parent: Int32) -> [Int32: String] {
        var pods: [Int32: String] = [:]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 2, Int32(fields[1]) == parent,
                  let raw = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { continue }
            let arguments = raw.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            guard arguments.contains("expert-pod"), let index = arguments.firstIndex(of: "--shard"), index + 1 < arguments.count else { continue }
            pods[pid] = arguments[index + 1]
        }
        return pods
    }

    static func until(_ what: String, timeout: Duration, _ condition: () throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try condition() { return }
            try await Task.sleep(for: .milliseconds(250))
        }
        if try condition() { return }
        Issue.record("timed out waiting for: \(what)")
        throw CancellationError()
    }

    /// `eaas worker --experts remote --pool scenario` against eaas up's API server answers a completion.
    static func workerGenerates(directory: String) async throws {
        let output = directory + "/worker.txt"
        _ = FileManager.default.createFile(atPath: output, contents: nil)
        let arguments = ["worker", "--model", directory + "/up/model", "--host", "127.0.0.1", "--port", "0",
                            "--experts", "remote", "--pool", "scenario", "--transport", "shm"]
        let environment = ProcessInfo.processInfo.environment.merging([
            "KUBECONFIG": directory + "/up/kubeconfig", "EAAS_POOL_TOKEN": "scenario-secret-token", "POD_NAMESPACE": "default",
        ]) { $1 }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        let worker = try ChildProcess(executable: CLITests.binary, arguments: arguments, environment: environment,
                                      standardOutput: .handle(handle), standardError: .handle(handle))
        try? handle.close()
        defer { if worker.isRunning { worker.interrupt() } }
        func text() -> String { (try? String(contentsOfFile: output, encoding: .utf8)) ?? "" }
        do {
            try await until("the worker listens", timeout: .seconds(60)) { text().contains("listening 127.0.0.1:") }
        } catch {
            Issue.record("worker output:\n\(text())")
            throw error
        }
        let line = text().split(separator: "\n").first { $0.hasPrefix("listening ") } ?? ""
        let port = line.split(separator: " ")[1].split(separator: ":").last.map(String.init) ?? ""
        var request = URLRequest(url: URL(string: "http://127.0.0.1:\(port)/v1/completions")!)
        request.httpMethod = "POST"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.httpBody = Data(#"{"prompt": [1, 2, 3], "max_tokens": 4, "ignore_eos": true}"#.utf8)
        request.timeoutInterval = 60
        let (body, response) = try await URLSession.shared.data(for: request)
        #expect((response as? HTTPURLResponse)?.statusCode == 200, "\(String(decoding: body, as: UTF8.self))")
        let json = try JSONSerialization.jsonObject(with: body) as? [String: Any]
        let choice = (json?["choices"] as? [[String: Any]])?.first
        #expect((choice?["token_ids"] as? [Int])?.count == 4, "\(String(decoding: body, as: UTF8.self))")
        worker.interrupt()
        try await until("the worker exits", timeout: .seconds(30)) { !worker.isRunning }
        #expect(worker.terminationStatus == 0)
    }

    @Test("load rises: a shard scales up; an `eaas worker --pool` finds the pods through the API; a pod SIGKILLed under load is replaced with no failed request; load falls: back down after the window; Ctrl-C stops cleanly")
    func upScalesAndSurvivesAKill() async throws {
        let directory = try CLITests.temporaryDirectory()
        let output = directory + "/out.txt"
        _ = FileManager.default.createFile(atPath: output, contents: nil)
        // A pool without a model (eaas up writes the seeded one) whose target is low enough that the
        // load below needs 3 replicas per shard even on a slow machine: 6 requests/s of 40 tokens is
        // about 480 expert-tokens/s per shard against 150 per replica.
        let pool = """
            apiVersion: eaas.dev/v1alpha1
            kind: ExpertPool
            metadata:
              name: scenario
            spec:
              shards: {expertsPerShard: 4}
              replicas: {min: 1, max: 3}
              autoscaling:
                target: 150
                scrapeIntervalSeconds: 1
                behavior: {scaleDown: {stabilizationWindowSeconds: 10}}
              transport: {backend: shm, port: 7070, metricsPort: 9090}
              poolTokenSecret: {name: scenario-token}
              drainSeconds: 3
            ---
            apiVersion: v1
            kind: Secret
            metadata:
              name: scenario-token
            data:
              token: %TOKEN%
            """.replacingOccurrences(of: "%TOKEN%", with: "c2NlbmFyaW8tc2VjcmV0LXRva2Vu")
        try pool.write(toFile: directory + "/pool.yaml", atomically: true, encoding: .utf8)
        // 1 request/s, then 6, then none.
        let arguments = ["up", "-f", directory + "/pool.yaml", "--workdir", directory + "/up", "--plain", "--port", "0", "--load", "5:1,45:6,600:0", "--duration", "240"]
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        let process = try ChildProcess(executable: CLITests.binary, arguments: arguments,
                                       standardOutput: .handle(handle), standardError: .handle(handle))
        try? handle.close()
        func text() -> String { (try? String(contentsOfFile: output, encoding: .utf8)) ?? "" }
        defer { if process.isRunning { process.interrupt() } }

        do {
            // Load rises: some shard gets more than one ready replica.
            try await Self.until("a shard scales up", timeout: .seconds(90)) {
                Self.lastTable(text()).values.contains { $0.ready >= 2 }
            }
            let table = Self.lastTable(text())
            let (shard, row) = try #require(table.first { $0.value.ready >= 2 })
            let experts = shard == "s0" ? "0-3" : "4-7"

            // SIGKILL one of its pods while the load goes on: first, before anything slow, so the kill
            // lands inside the 45 s of high load even on a loaded machine.
            let pods = Self.podProcesses(parent: process.processIdentifier)
            let victim = try #require(pods.first { $0.value == experts }?.key, "no expert-pod process for \(shard) among \(pods)")
            kill(victim, SIGKILL)
            try await Self.until("the killed pod is replaced", timeout: .seconds(60)) {
                let now = Self.podProcesses(parent: process.processIdentifier)
                // As many as before the kill, or as many as the shard now wants if the load has
                // already fallen (a slow machine) and the controller scaled down meanwhile.
                let current = Self.lastTable(text())[shard]
                let wanted = min(row.ready, current?.desired ?? row.ready)
                return now[victim] == nil && now.filter { $0.value == experts }.count >= wanted && (current?.ready ?? 0) >= wanted
            }

            // The API server answers only the kubeconfig's bearer token (the file is this user's alone).
            let kubeconfig = try String(contentsOfFile: directory + "/up/kubeconfig", encoding: .utf8)
            var info = stat()
            #expect(stat(directory + "/up/kubeconfig", &info) == 0 && info.st_mode & 0o777 == 0o600)
            let serverURL = try #require(kubeconfig.range(of: #"https?://[^"' }]+"#, options: .regularExpression).map { String(kubeconfig[$0]) })
            let (_, anonymous) = try await URLSession.shared.data(from: try #require(URL(string: serverURL + "/api/v1/namespaces/default/secrets")))
            #expect((anonymous as? HTTPURLResponse)?.statusCode == 401, "an unauthenticated request was answered")

            let log = (try? String(contentsOfFile: directory + "/up/eaas.log", encoding: .utf8)) ?? ""
            #expect(log.contains("replacing the pod"))
            // The local runtime removed the shared slot region the killed pod could not.
            let left = (try? FileManager.default.contentsOfDirectory(atPath: "/dev/shm")) ?? []
            #expect(!left.contains { $0.hasPrefix("eaas-slots-") && $0.contains("-\(victim)-") }, "\(left)")

            // An attention worker run as the sample Deployment runs it (`--pool`) finds the pods
            // through eaas up's API server and generates.
            try await Self.workerGenerates(directory: directory)

            // Load falls: every shard back to one replica once the 10 s window has passed.
            try await Self.until("every shard back to 1 replica", timeout: .seconds(120)) {
                let table = Self.lastTable(text())
                return table.count == 2 && table.values.allSatisfy { $0 == Row(replicas: 1, desired: 1, ready: 1) }
            }
        } catch {
            Issue.record("eaas up output:\n\(text().suffix(3000))")
            let log = (try? String(contentsOfFile: directory + "/up/eaas.log", encoding: .utf8)) ?? ""
            Issue.record("eaas.log (last 6000 bytes):\n\(log.suffix(6000))")
            throw error
        }

        // Ctrl-C: everything stops, and no request failed along the way.
        process.interrupt()
        try await Self.until("eaas up exits", timeout: .seconds(60)) { !process.isRunning }
        #expect(process.terminationStatus == 0)
        let summary = text().split(separator: "\n").last { $0.hasPrefix("eaas up stopped") }.map(String.init) ?? ""
        #expect(summary.contains(" 0 failed"), "\(summary)")
        #expect(Self.podProcesses(parent: process.processIdentifier).isEmpty)
    }

    @Test("requests that fail make eaas up exit 1, saying how many failed on its last line")
    func upExitsOneWhenRequestsFail() async throws {
        let directory = try CLITests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let made = try await CLITests.run(["model", "init", "--arch", "qwen3-moe", "--layers", "1", "--experts", "4", "--top-k", "2", "--hidden", "32",
                                     "--dtype", "f32", "--out", directory + "/model"])
        #expect(made.status == 0, "\(made.stderr)")
        // Every embedding NaN: every request's hidden states are refused by the pods (and none
        // of this is the machine's fault), so every request fails.
        let path = directory + "/model/model.safetensors"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        let headerLength = Int(bytes.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self).littleEndian })
        let header = try #require(try JSONSerialization.jsonObject(with: bytes.subdata(in: 8..<(8 + headerLength))) as? [String: Any])
        let offsets = try #require((header["model.embed_tokens.weight"] as? [String: Any])?["data_offsets"] as? [Int])
        let nan = Float.nan.bitPattern.littleEndian
        for offset in stride(from: 8 + headerLength + offsets[0], to: 8 + headerLength + offsets[1], by: 4) {
            withUnsafeBytes(of: nan) { bytes.replaceSubrange(offset..<(offset + 4), with: $0) }
        }
        try bytes.write(to: URL(fileURLWithPath: path))
        let pool = """
            apiVersion: eaas.dev/v1alpha1
            kind: ExpertPool
            metadata:
              name: poisoned
            spec:
              model: {path: \(directory)/model, experts: 4}
              shards: {expertsPerShard: 4}
              replicas: {min: 1, max: 1}
              transport: {backend: tcp, port: 7070, metricsPort: 9090}
              poolTokenSecret: {name: poisoned-token}
            ---
            apiVersion: v1
            kind: Secret
            metadata:
              name: poisoned-token
            data:
              token: cG9pc29uZWQtcG9vbC10b2tlbg==
            """
        try pool.write(toFile: directory + "/pool.yaml", atomically: true, encoding: .utf8)
        let output = directory + "/out.txt"
        _ = FileManager.default.createFile(atPath: output, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        let process = try ChildProcess(executable: CLITests.binary,
                                       arguments: ["up", "-f", directory + "/pool.yaml", "--workdir", directory + "/up", "--plain", "--port", "0",
                                                   "--load", "30:2", "--duration", "15", "--request-tokens", "4"],
                                       standardOutput: .handle(handle), standardError: .handle(handle))
        try? handle.close()
        defer { if process.isRunning { process.kill() } }
        let status = await process.exit(within: .seconds(150))
        let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        #expect(status == 1, "eaas up exited \(status.map(String.init) ?? "not at all"):\n\(text.suffix(2000))")
        let last = text.split(separator: "\n").last.map(String.init) ?? ""
        #expect(last.hasPrefix("eaas up: ") && last.contains("requests failed"), "last line: \(last)")
    }
}
