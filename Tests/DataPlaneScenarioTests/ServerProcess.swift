import Foundation
import Platform
import Testing
import Transport

/// An `eaas transport-server` child process on loopback.
final class ServerProcess: @unchecked Sendable {
    /// The `eaas` built beside this test bundle.
    static let binary: String = {
        var directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        if directory.lastPathComponent.hasSuffix(".xctest") { directory = directory.deletingLastPathComponent() }
        return directory.appendingPathComponent("eaas").path
    }()

    private(set) var process: ChildProcess!
    let experts: [HostedExpert]
    private let errors = Pipe()
    private(set) var address = ""
    private(set) var regionPath: String?

    /// Starts a server hosting `experts` of layer 0 and waits for its "listening" line.
    init(id: Int, experts: [Int], hidden: Int, token: String, delayMicroseconds: Int, listen: String? = nil) throws {
        self.experts = experts.map { HostedExpert(layer: 0, expert: UInt16($0)) }
        let arguments = ["transport-server", "--id", "\(id)", "--hidden", "\(hidden)", "--dtype", "f32", "--slots", "16", "--max-batch", "64",
                             "--experts", "0:" + experts.map(String.init).joined(separator: ","), "--delay-us", "\(delayMicroseconds)", "--drain-seconds", "10"]
            + (listen.map { ["--listen", $0] } ?? [])
        let out = Pipe()
        process = try ChildProcess(executable: Self.binary, arguments: arguments, environment: ["EAAS_POOL_TOKEN": token],
                                   standardOutput: .pipe(out), standardError: .pipe(errors))
        var line = Data()
        let deadline = Date().addingTimeInterval(20)
        while !line.contains(UInt8(ascii: "\n")), Date() < deadline {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            line.append(chunk)
        }
        let text = String(decoding: line, as: UTF8.self)
        let words = text.split(whereSeparator: \.isWhitespace)
        guard words.count >= 2, words[0] == "listening" else {
            process.terminate()
            throw TransportError.unreachable(address: "eaas transport-server", reason: "did not start: '\(text)'")
        }
        address = String(words[1])
        if words.count >= 4, words[2] == "region" { regionPath = String(words[3]) }
    }

    var info: ServerInfo { ServerInfo(id: "server-\(process.pid)", address: address, experts: experts) }

    func kill(_ signal: Int32) { process.send(signal) }

    /// Waits for the process to exit; returns its status (128 + the signal that ended it, if one
    /// did) and what it wrote on stderr.
    func waitForExit() -> (status: Int32, stderr: String) {
        let status = process.waitUntilExit()
        let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        return (status, text)
    }

    /// Kills the process if it still runs and removes a region a SIGKILL left behind.
    func cleanUp() {
        process.kill()
        process.waitUntilExit()
        DataPlaneServer.removeRegions(leftBy: process.pid)
    }
}

/// Clients that run steps in a loop on their own threads, each with its own dispatcher, and check
/// every answer against the synthetic experts' closed form.
final class ClientFleet: @unchecked Sendable {
    private let lock = NSLock()
    private var stopped = false
    private var stepsDone: [Int]
    private var wrong: [String] = []
    private var failures: [String] = []
    private var failovers = 0
    private let group = DispatchGroup()

    init(clients: Int, membership: MembershipSource, backend: BackendKind, token: String, hidden: Int, experts: Int) {
        stepsDone = [Int](repeating: 0, count: clients)
        for client in 0..<clients {
            group.enter()
            Thread { [self] in
                var configuration = Dispatcher.Configuration(poolToken: Array(token.utf8), clientID: UInt64(client + 1))
                configuration.backend = backend
                configuration.maximumTimeout = .seconds(2)
                let dispatcher = Dispatcher(membership: membership, configuration: configuration)
                var step = 0
                while !isStopped {
                    step += 1
                    let tokens = 1 + (step + client) % 8, topK = 2
                    var ids: [Int32] = [], weights: [Float] = []
                    for t in 0..<tokens {
                        let first = (t * 5 + step + client) % experts
                        ids += [Int32(first), Int32((first + 1 + t % (experts - 1)) % experts)]
                        weights += [Float(t % 3 + 1) / 4, Float(step % 5 + 1) / 8]
                    }
                    let states = (0..<(tokens * hidden)).map { Float(($0 * 7 + step) % 23) / 8 - 1 }
                    do {
                        let sums = try states.withUnsafeBytes {
                            try dispatcher.step(layer: 0, tokens: tokens, topK: topK, ids: ids, weights: weights, states: $0, hidden: hidden, dtype: .f32)
                        }
                        // Expert e adds e: Σ_k w_k · (x + e_k). A lost or doubled answer shows here.
                        for t in 0..<tokens {
                            for h in 0..<hidden {
                                let x = states[t * hidden + h]
                                let want = weights[2 * t] * (x + Float(ids[2 * t])) + weights[2 * t + 1] * (x + Float(ids[2 * t + 1]))
                                if abs(sums[t * hidden + h] - want) > 1e-4 * max(1, abs(want)) {
                                    record(wrong: "client \(client) step \(step) token \(t)[\(h)]: \(sums[t * hidden + h]) instead of \(want)")
                                }
                            }
                        }
                        record(step: client)
                    } catch {
                        record(failure: "client \(client) step \(step): \(error)")
                    }
                }
                lock.lock(); failovers += dispatcher.failovers; lock.unlock()
                dispatcher.close()
                group.leave()
            }.start()
        }
    }

    private var isStopped: Bool { lock.lock(); defer { lock.unlock() }; return stopped }
    private func record(step client: Int) { lock.lock(); stepsDone[client] += 1; lock.unlock() }
    private func record(wrong text: String) { lock.lock(); if wrong.count < 10 { wrong.append(text) }; lock.unlock() }
    private func record(failure text: String) { lock.lock(); if failures.count < 10 { failures.append(text) }; lock.unlock() }

    /// Steps each client has completed so far.
    var steps: [Int] { lock.lock(); defer { lock.unlock() }; return stepsDone }

    /// Stops the clients and returns what they saw.
    func stop() -> (steps: [Int], wrong: [String], failures: [String], failovers: Int) {
        lock.lock(); stopped = true; lock.unlock()
        group.wait()
        lock.lock(); defer { lock.unlock() }
        return (stepsDone, wrong, failures, failovers)
    }

    /// Waits until every client has done `more` steps beyond `from`, or `timeout` passes.
    func waitForProgress(from: [Int], more: Int, timeout: TimeInterval) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if zip(steps, from).allSatisfy({ $0 - $1 >= more }) { return true }
            Thread.sleep(forTimeInterval: 0.01)
        }
        return false
    }
}
