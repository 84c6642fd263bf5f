import ArgumentParser
import CPlatform
import Foundation
import Transport

/// `eaas bench transport`: request/response round trips through a backend against the limit the
/// backend cannot beat, measured interleaved in one run: for `shm` a memcpy of the same bytes, for
/// `tcp` a bare socket echo of the same bytes. Ours is the real path: a `DataPlaneServer` and the
/// dispatcher's `ServerLink` (handshake, slot or frames, validation), with experts that only store
/// their answer and a client that reads it. Also the dispatcher's decision cost.
struct TransportBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "transport",
        abstract: "Round-trip time and throughput of a transport backend against its limit (memcpy or socket echo).",
        discussion: "Run from a release build (swift build -c release); debug numbers mean nothing."
    )

    @Option(help: "Backend: shm or tcp.") var backend: String = "shm"
    @Option(help: "Tokens per request, comma-separated.") var tokens: String = "1,2,4,8,16,32,64,128,256,512"
    @Option(help: "Hidden size (bf16 hidden states on the wire, f32 sums back).") var hidden: Int = 4096
    @Option(help: "Seconds to spend on each side of each row.") var seconds: Double = 0.5
    @Flag(help: "Print one JSON document instead of a table.") var json = false

    func validate() throws {
        guard ["shm", "tcp"].contains(backend) else { throw ValidationError("--backend '\(backend)' is not shm or tcp (verbs needs an RDMA device)") }
        guard tokens.split(separator: ",").allSatisfy({ (Int($0) ?? 0) >= 1 }) else { throw ValidationError("--tokens: '\(tokens)' is not a list of positive integers") }
        guard hidden >= 1, hidden <= 65_536 else { throw ValidationError("--hidden must be between 1 and 65536") }
    }

    func run() throws {
        #if DEBUG
        FileHandle.standardError.write(Data("warning: this is a debug build; its numbers mean nothing (swift build -c release)\n".utf8))
        #endif
        let counts = tokens.split(separator: ",").compactMap { Int($0) }
        let maxTokens = counts.max()!
        var report = BenchReport(bench: "transport")
        var table = TextTable(columns: ["backend", "tokens", "bytes", "rtt µs", "GB/s", "limit GB/s", "ratio"])
        if backend == "tcp" { pinToOneCPU() }
        let ours = try LinkRoundTrip(backend: backend == "shm" ? .shm : .tcp, maxTokens: maxTokens, hidden: hidden)
        defer { ours.close() }
        let limit: TransportLimit = backend == "shm" ? MemcpyLimit(maxTokens: maxTokens, hidden: hidden) : try EchoLimit(maxTokens: maxTokens, hidden: hidden)
        defer { limit.close() }
        for t in counts {
            let request = RequestHeader(sequence: 0, layer: 0, dtype: .bf16, slotsPerToken: 1, tokens: t, hidden: hidden)
            let bytes = request.frameSize + ResponseHeader(sequence: 0, tokens: t, hidden: hidden).frameSize
            var ourTimes: [Double] = [], limitTimes: [Double] = []
            _ = try ours.roundTrip(tokens: t)
            try limit.run(tokens: t)
            var spent = 0.0
            while ourTimes.count < 5 || spent < 2 * seconds {
                let batch = max(1, min(1000, Int(0.01 / max(ourTimes.last ?? 1e-3, 1e-7))))
                let a = try timeSeconds { for _ in 0..<batch { _ = try ours.roundTrip(tokens: t) } } / Double(batch)
                let b = try timeSeconds { for _ in 0..<batch { try limit.run(tokens: t) } } / Double(batch)
                ourTimes.append(a)
                limitTimes.append(b)
                spent += (a + b) * Double(batch)
                if ourTimes.count >= 400 { break }
            }
            let rtt = ourTimes.median, reference = limitTimes.median
            let gbps = Double(bytes) / rtt / 1e9, limitGbps = Double(bytes) / reference / 1e9
            report.results.append(["backend": backend, "tokens": t, "bytes": bytes, "rtt_us": rtt * 1e6, "gbps": gbps,
                                   "limit_gbps": limitGbps, "ratio_to_limit": reference / rtt])
            table.rows.append([backend, "\(t)", "\(bytes)", String(format: "%.1f", rtt * 1e6), String(format: "%.2f", gbps),
                               String(format: "%.2f", limitGbps), String(format: "%.3f", reference / rtt)])
            FileHandle.standardError.write(Data("  \(table.rows.last!.joined(separator: " "))\n".utf8))
        }
        report.summary["dispatcher_ns_per_token_expert"] = try dispatcherCost()
        if json {
            print(try report.json())
        } else {
            print(table.render())
            print(String(format: "dispatcher_ns_per_token_expert: %.1f", report.summary["dispatcher_ns_per_token_expert"] as! Double))
        }
    }

    /// Keeps this thread, and every thread it starts from now on, on the CPU it runs on. Round
    /// trips are sequential, so one CPU loses nothing, and it puts the protocol and the echo limit
    /// on equal terms: on a virtual machine, waking a thread on an idle second vCPU can cost
    /// 100 µs, and which of two connections gets that penalty is otherwise down to the scheduler.
    func pinToOneCPU() {
        if eaas_pin_to_current_cpu() < 0 {
            FileHandle.standardError.write(Data("warning: could not pin to one CPU (errno \(errno)); tcp numbers may be noisier\n".utf8))
        }
    }

    /// Replica choice plus step planning for a 256-token top-8 step over 64 experts with 2 replicas
    /// each on 16 servers, per token-expert.
    func dispatcherCost() throws -> Double {
        var servers: [ServerInfo] = []
        for s in 0..<16 {
            // Expert e lives on servers e mod 16 and (e + 8) mod 16: two replicas each.
            let hosted: [HostedExpert] = (0..<64).filter { e in e % 16 == s || (e + 8) % 16 == s }.map { e in HostedExpert(layer: 0, expert: UInt16(e)) }
            servers.append(ServerInfo(id: "pod-\(s)", address: "pod-\(s):7000", experts: hosted))
        }
        let view = MembershipView(servers: servers)
        let tokens = 256, k = 8
        // Distinct experts within each token, spread over all 64.
        var routed = [Int32](repeating: 0, count: tokens * k)
        for t in 0..<tokens { for j in 0..<k { routed[t * k + j] = Int32((t * 5 + j * 8) % 64) } }
        let weights = [Float](repeating: 1.0 / Float(k), count: tokens * k)
        var chooser = ReplicaChooser()
        let outstanding = [Int](repeating: 0, count: servers.count)
        var samples: [Double] = []
        for _ in 0..<30 {
            let seconds = try timeSeconds {
                for _ in 0..<20 {
                    let demand = StepPlanner.demand(layer: 0, ids: routed)
                    let choice = try chooser.choose(demand, view: view, outstanding: outstanding)
                    _ = StepPlanner.plan(layer: 0, tokens: tokens, topK: k, ids: routed, weights: weights, choice: choice)
                }
            }
            samples.append(seconds / 20 / Double(tokens * k) * 1e9)
        }
        return samples.median
    }
}

/// Request and response payloads prepared once: ids, weights, bf16 states.
struct Payload {
    let ids: [UInt16], weights: [Float], states: [UInt16], rows: [Int]

    init(maxTokens: Int, hidden: Int) {
        ids = (0..<maxTokens).map { UInt16($0 % 64) }
        weights = [Float](repeating: 0.5, count: maxTokens)
        states = (0..<(maxTokens * hidden)).map { UInt16(0x3f80 + $0 % 64) }
        rows = Array(0..<maxTokens)
    }
}

/// Experts that compute nothing: the bench measures what the transport adds to moving a request
/// in and an answer out. Computing the sums (storing them) and consuming them (reading them)
/// happen whatever the transport, so neither side of the comparison does either: ours leaves the
/// answer area as it is and the client does not read it; the limit just copies the bytes.
final class UncomputedExperts: ExpertComputer {
    let experts: [HostedExpert]
    let hidden: Int
    let dtype = WireDType.bf16

    init(hidden: Int) {
        experts = (0..<64).map { HostedExpert(layer: 0, expert: UInt16($0)) }
        self.hidden = hidden
    }

    func compute(_ batch: [ComputeItem]) -> [ComputeFailure?] { [ComputeFailure?](repeating: nil, count: batch.count) }
}

/// Our side: a real `DataPlaneServer` and a client link to it over the backend, as the
/// dispatcher uses them.
final class LinkRoundTrip {
    let server: DataPlaneServer
    let link: ServerLink
    let payload: Payload
    let hidden: Int
    var sequence: UInt64 = 0

    init(backend: BackendKind, maxTokens: Int, hidden: Int) throws {
        self.hidden = hidden
        payload = Payload(maxTokens: maxTokens, hidden: hidden)
        let token = Array("bench".utf8)
        var configuration = DataPlaneServer.Configuration(poolToken: token, serverID: 1)
        configuration.maxBatchTokens = maxTokens
        configuration.maxSlotsPerToken = 1
        configuration.slots = 1
        configuration.offerShm = backend == .shm
        server = try DataPlaneServer(computer: UncomputedExperts(hidden: hidden), configuration: configuration)
        server.start()
        var client = Dispatcher.Configuration(poolToken: token, clientID: 1)
        client.backend = backend
        do {
            link = try ServerLinks.open(to: ServerInfo(id: "bench", address: "127.0.0.1:\(server.port)", experts: []),
                                        configuration: client, verbs: nil, hidden: hidden, dtype: .bf16)
        } catch {
            server.stop()
            throw error
        }
    }

    func roundTrip(tokens: Int) throws -> Int {
        sequence += 1
        let header = RequestHeader(sequence: sequence, layer: 0, dtype: .bf16, slotsPerToken: 1, tokens: tokens, hidden: hidden)
        try payload.ids.withUnsafeBufferPointer { ids in
            try payload.weights.withUnsafeBufferPointer { weights in
                try payload.states.withUnsafeBytes { states in
                    try payload.rows.withUnsafeBufferPointer { rows in
                        try link.send(OutgoingRequest(header: header, ids: UnsafeBufferPointer(rebasing: ids[0..<tokens]),
                                                      weights: UnsafeBufferPointer(rebasing: weights[0..<tokens]), states: states,
                                                      rows: UnsafeBufferPointer(rebasing: rows[0..<tokens])))
                    }
                }
            }
        }
        guard case .response(let response)? = try link.receive(sequence: sequence, until: .now + .seconds(10), likelyBy: .now) else {
            throw TransportError.timedOut(sequence: sequence, after: .seconds(10))
        }
        return response.header.tokens
    }

    func close() {
        link.close()
        server.stop()
    }
}

/// What moving the same bytes costs without our protocol: the limit each backend is held to.
protocol TransportLimit {
    func run(tokens: Int) throws
    func close()
}

/// shm's limit: memcpy of the request's and the response's bytes (what the slots must at least do).
final class MemcpyLimit: TransportLimit {
    let scratch: UnsafeMutableRawBufferPointer
    let source: UnsafeMutableRawBufferPointer
    let hidden: Int

    init(maxTokens: Int, hidden: Int) {
        self.hidden = hidden
        let request = RequestHeader(sequence: 0, layer: 0, dtype: .bf16, slotsPerToken: 1, tokens: maxTokens, hidden: hidden).frameSize
        let response = ResponseHeader(sequence: 0, tokens: maxTokens, hidden: hidden).frameSize
        scratch = .allocate(byteCount: request + response + 16384, alignment: 4096)
        source = .allocate(byteCount: request + response + 16384, alignment: 4096)
        source.initializeMemory(as: UInt8.self, repeating: 0x3f)
        scratch.initializeMemory(as: UInt8.self, repeating: 0)
    }

    func run(tokens: Int) throws {
        let request = RequestHeader(sequence: 0, layer: 0, dtype: .bf16, slotsPerToken: 1, tokens: tokens, hidden: hidden).frameSize
        let response = ResponseHeader(sequence: 0, tokens: tokens, hidden: hidden).frameSize
        // Each destination sits half a page away from its source's offset within a 4 KiB page:
        // glibc's `rep movsb` copy runs up to 20x slower on AMD when the destination is just ahead
        // of the source modulo 4 KiB, and the limit should be the best memcpy this machine does.
        let responseStart = (request + 8191) / 4096 * 4096
        (scratch.baseAddress! + 2048).copyMemory(from: source.baseAddress!, byteCount: request)
        (scratch.baseAddress! + responseStart + 2048).copyMemory(from: source.baseAddress! + responseStart, byteCount: response)
    }

    func close() {
        scratch.deallocate()
        source.deallocate()
    }
}

/// tcp's limit: a bare echo server that reads the request's number of bytes and writes the
/// response's number back, on its own loopback connection.
final class EchoLimit: TransportLimit, @unchecked Sendable {
    let listener: Socket
    private(set) var echo: Socket!
    let hidden: Int
    let buffer: UnsafeMutableRawBufferPointer
    let finished = DispatchGroup()
    var serverSocket: Socket?

    init(maxTokens: Int, hidden: Int) throws {
        self.hidden = hidden
        let requestSize = RequestHeader(sequence: 0, layer: 0, dtype: .bf16, slotsPerToken: 1, tokens: maxTokens, hidden: hidden).frameSize
        let responseSize = ResponseHeader(sequence: 0, tokens: maxTokens, hidden: hidden).frameSize
        buffer = .allocate(byteCount: max(requestSize, responseSize) + 8, alignment: 64)
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        listener = try Socket.listen(host: "127.0.0.1", port: 0)
        let accepted = DispatchSemaphore(value: 0)
        finished.enter()
        Thread { [self] in
            defer { finished.leave() }
            guard let socket = try? listener.accept() else { accepted.signal(); return }
            serverSocket = socket
            accepted.signal()
            let inbox = UnsafeMutableRawBufferPointer.allocate(byteCount: max(requestSize, responseSize) + 8, alignment: 64)
            defer { inbox.deallocate() }
            inbox.initializeMemory(as: UInt8.self, repeating: 0)
            // Each round: 8 bytes saying how much more to read and how much to send back, then the bytes.
            while (try? socket.readExactly(UnsafeMutableRawBufferPointer(rebasing: inbox[0..<8]))) == true {
                let inCount = Int(inbox.load(fromByteOffset: 0, as: UInt32.self)), outCount = Int(inbox.load(fromByteOffset: 4, as: UInt32.self))
                guard (try? socket.readExactly(UnsafeMutableRawBufferPointer(rebasing: inbox[0..<inCount]))) == true,
                      (try? socket.writeAll(UnsafeRawBufferPointer(rebasing: inbox[0..<outCount]))) != nil else { break }
            }
        }.start()
        do {
            echo = try Socket.connect(host: "127.0.0.1", port: listener.localPort)
        } catch {
            listener.shutdown()
            finished.wait()
            listener.close()
            buffer.deallocate()
            throw error
        }
        accepted.wait()
    }

    func run(tokens: Int) throws {
        let request = RequestHeader(sequence: 0, layer: 0, dtype: .bf16, slotsPerToken: 1, tokens: tokens, hidden: hidden).frameSize
        let response = ResponseHeader(sequence: 0, tokens: tokens, hidden: hidden).frameSize
        // One write: the 8 bytes of counts lead the request's bytes.
        buffer.storeBytes(of: UInt32(request - 8), toByteOffset: 0, as: UInt32.self)
        buffer.storeBytes(of: UInt32(response), toByteOffset: 4, as: UInt32.self)
        try echo.writeAll(UnsafeRawBufferPointer(rebasing: buffer[0..<request]))
        guard try echo.readExactly(UnsafeMutableRawBufferPointer(rebasing: buffer[0..<response])) else {
            throw TransportError.unreachable(address: echo.label, reason: "the echo server closed the connection")
        }
    }

    func close() {
        echo.shutdown()
        finished.wait()
        echo.close()
        serverSocket?.close()
        listener.close()
        buffer.deallocate()
    }
}
