import ArgumentParser
import Foundation
import Transport

/// `eaas bench transport`: request/response round trips through a backend against the limit the
/// backend cannot beat, measured interleaved in one run: for `shm` a memcpy of the same bytes, for
/// `tcp` a bare socket echo of the same bytes. Also the dispatcher's decision cost.
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
        let harness: RoundTripHarness = backend == "shm"
            ? try ShmHarness(maxTokens: maxTokens, hidden: hidden) : try TCPHarness(maxTokens: maxTokens, hidden: hidden)
        defer { harness.close() }
        for t in counts {
            let request = RequestHeader(sequence: 0, layer: 0, dtype: .bf16, slotsPerToken: 1, tokens: t, hidden: hidden)
            let bytes = request.frameSize + ResponseHeader(sequence: 0, tokens: t, hidden: hidden).frameSize
            var ours: [Double] = [], limit: [Double] = []
            _ = try harness.roundTrip(tokens: t)
            _ = try harness.limit(tokens: t)
            var spent = 0.0
            while ours.count < 5 || spent < 2 * seconds {
                let batch = max(1, min(1000, Int(0.01 / max(ours.last ?? 1e-3, 1e-7))))
                let a = try timeSeconds { for _ in 0..<batch { _ = try harness.roundTrip(tokens: t) } } / Double(batch)
                let b = try timeSeconds { for _ in 0..<batch { try harness.limit(tokens: t) } } / Double(batch)
                ours.append(a)
                limit.append(b)
                spent += (a + b) * Double(batch)
                if ours.count >= 400 { break }
            }
            let rtt = ours.median, reference = limit.median
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

/// One side of the comparison for a backend: our round trip, and the limit for the same bytes.
protocol RoundTripHarness {
    func roundTrip(tokens: Int) throws -> Int
    func limit(tokens: Int) throws
    func close()
}

/// Request and response payloads prepared once: ids, weights, bf16 states, f32 sums.
struct Payload {
    let ids: [UInt16], weights: [Float], states: [UInt16], sums: [Float]

    init(maxTokens: Int, hidden: Int) {
        ids = (0..<maxTokens).map { UInt16($0 % 64) }
        weights = [Float](repeating: 0.5, count: maxTokens)
        states = (0..<(maxTokens * hidden)).map { UInt16(0x3f80 + $0 % 64) }
        sums = (0..<(maxTokens * hidden)).map { Float($0 % 97) }
    }
}

/// shm: the client encodes into its slot, the server (another thread) decodes in place and encodes
/// the response into the response area. Limit: memcpy of the request and the response bytes.
final class ShmHarness: RoundTripHarness, @unchecked Sendable {
    let server: SlotServer
    let region: SharedRegion
    let client: ClientSlot
    let payload: Payload
    let hidden: Int
    var sequence: UInt64 = 0
    let stop = NSLock()
    var running = true
    let finished = DispatchSemaphore(value: 0)
    let scratch: UnsafeMutableRawBufferPointer

    init(maxTokens: Int, hidden: Int) throws {
        self.hidden = hidden
        payload = Payload(maxTokens: maxTokens, hidden: hidden)
        let request = RequestHeader(sequence: 0, layer: 0, dtype: .bf16, slotsPerToken: 1, tokens: maxTokens, hidden: hidden)
        let response = ResponseHeader(sequence: 0, tokens: maxTokens, hidden: hidden)
        let path = "/dev/shm/eaas-bench-\(getpid())"
        server = try SlotServer(path: path, layout: SlotLayout(slots: 1, requestCapacity: request.frameSize, responseCapacity: response.frameSize))
        region = try SharedRegion.open(path: path)
        client = try ClientSlot(region: region, slot: 0)
        scratch = .allocate(byteCount: request.frameSize + response.frameSize + 16384, alignment: 4096)
        Thread { [self] in serve() }.start()
    }

    private var isRunning: Bool { stop.lock(); defer { stop.unlock() }; return running }

    private func serve() {
        while true {
            guard let (slot, sequence, bytes) = server.waitForRequest(timeout: .milliseconds(50)) else {
                if !isRunning { break }
                continue
            }
            guard case .request(let view) = try? Frame.decode(bytes) else { continue }
            let header = ResponseHeader(sequence: view.header.sequence, tokens: view.header.tokens, hidden: view.header.hidden)
            _ = try? server.respond(slot: slot, sequence: sequence) { buffer in
                payload.sums.withUnsafeBufferPointer {
                    FrameEncoder.encodeResponse(header, sums: UnsafeBufferPointer(rebasing: $0[0..<(header.tokens * header.hidden)]), into: buffer)
                }
            }
        }
        finished.signal()
    }

    func roundTrip(tokens: Int) throws -> Int {
        sequence += 1
        let header = RequestHeader(sequence: sequence, layer: 0, dtype: .bf16, slotsPerToken: 1, tokens: tokens, hidden: hidden)
        try client.beginRequest(sequence: sequence)
        let length = payload.ids.withUnsafeBufferPointer { i in payload.weights.withUnsafeBufferPointer { w in payload.states.withUnsafeBytes { s in
            FrameEncoder.encodeRequest(header, ids: UnsafeBufferPointer(rebasing: i[0..<tokens]), weights: UnsafeBufferPointer(rebasing: w[0..<tokens]),
                                       states: UnsafeRawBufferPointer(rebasing: s[0..<(tokens * hidden * 2)]), into: client.requestBuffer) } } }
        try client.publishRequest(sequence: sequence, length: length)
        let bytes = try client.waitResponse(sequence: sequence, timeout: .seconds(10))
        guard case .response(let response) = try Frame.decode(bytes) else { throw TransportError.timedOut(sequence: sequence, after: .zero) }
        return response.header.tokens
    }

    func limit(tokens: Int) throws {
        let request = RequestHeader(sequence: 0, layer: 0, dtype: .bf16, slotsPerToken: 1, tokens: tokens, hidden: hidden).frameSize
        let response = ResponseHeader(sequence: 0, tokens: tokens, hidden: hidden).frameSize
        // Each destination sits half a page away from its source's offset within a 4 KiB page:
        // glibc's `rep movsb` copy runs up to 20x slower on AMD when the destination is just ahead
        // of the source modulo 4 KiB, and the limit should be the best memcpy this machine does.
        func destination(for source: UnsafeRawPointer, page: Int) -> UnsafeMutableRawPointer {
            scratch.baseAddress! + page * 4096 + (Int(bitPattern: source) + 2048) % 4096
        }
        payload.states.withUnsafeBytes { s in
            destination(for: s.baseAddress!, page: 0).copyMemory(from: s.baseAddress!, byteCount: min(request, s.count))
        }
        let responsePage = (request + 8191) / 4096
        payload.sums.withUnsafeBytes { s in
            destination(for: s.baseAddress!, page: responsePage).copyMemory(from: s.baseAddress!, byteCount: min(response, s.count))
        }
    }

    func close() {
        stop.lock(); running = false; stop.unlock()
        finished.wait()
        region.close()
        server.close()
        scratch.deallocate()
    }
}

/// tcp: one connection to a server thread that decodes each request frame and answers it. Limit: a
/// bare echo server that reads the same number of bytes and writes the response's number back.
final class TCPHarness: RoundTripHarness, @unchecked Sendable {
    let listener: Socket, echoListener: Socket
    private(set) var connection: FrameConnection!
    private(set) var echo: Socket!
    let payload: Payload
    let hidden: Int
    var sequence: UInt64 = 0
    var requestBuffer: [UInt8]
    var echoBuffer: UnsafeMutableRawBufferPointer
    let finished = DispatchGroup()
    var serverSockets: [Socket] = []

    init(maxTokens: Int, hidden: Int) throws {
        self.hidden = hidden
        payload = Payload(maxTokens: maxTokens, hidden: hidden)
        let requestSize = RequestHeader(sequence: 0, layer: 0, dtype: .bf16, slotsPerToken: 1, tokens: maxTokens, hidden: hidden).frameSize
        let responseSize = ResponseHeader(sequence: 0, tokens: maxTokens, hidden: hidden).frameSize
        requestBuffer = [UInt8](repeating: 0, count: requestSize)
        echoBuffer = .allocate(byteCount: max(requestSize, responseSize), alignment: 64)
        listener = try Socket.listen(host: "127.0.0.1", port: 0)
        echoListener = try Socket.listen(host: "127.0.0.1", port: 0)
        let accepted = DispatchSemaphore(value: 0)
        finished.enter()
        Thread { [self] in
            defer { finished.leave() }
            guard let socket = try? listener.accept() else { accepted.signal(); return }
            serverSockets.append(socket)
            accepted.signal()
            let frames = FrameConnection(socket: socket)
            var out = [UInt8](repeating: 0, count: responseSize)
            while let bytes = try? frames.readFrame(), case .request(let view)? = try? Frame.decode(bytes) {
                let header = ResponseHeader(sequence: view.header.sequence, tokens: view.header.tokens, hidden: view.header.hidden)
                let n = payload.sums.withUnsafeBufferPointer { s in out.withUnsafeMutableBytes {
                    FrameEncoder.encodeResponse(header, sums: UnsafeBufferPointer(rebasing: s[0..<(header.tokens * header.hidden)]), into: $0) } }
                guard (try? out.withUnsafeBytes { try socket.writeAll(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }) != nil else { break }
            }
        }.start()
        connection = try FrameConnection.connect(host: "127.0.0.1", port: listener.localPort)
        accepted.wait()
        finished.enter()
        Thread { [self] in
            defer { finished.leave() }
            guard let socket = try? echoListener.accept() else { accepted.signal(); return }
            serverSockets.append(socket)
            accepted.signal()
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(requestSize, responseSize) + 8, alignment: 64)
            defer { buffer.deallocate() }
            // Each round: 8 bytes saying how much to read and how much to send back, then the bytes.
            while (try? socket.readExactly(UnsafeMutableRawBufferPointer(rebasing: buffer[0..<8]))) == true {
                let inCount = Int(buffer.load(fromByteOffset: 0, as: UInt32.self)), outCount = Int(buffer.load(fromByteOffset: 4, as: UInt32.self))
                guard (try? socket.readExactly(UnsafeMutableRawBufferPointer(rebasing: buffer[0..<inCount]))) == true,
                      (try? socket.writeAll(UnsafeRawBufferPointer(rebasing: buffer[0..<outCount]))) != nil else { break }
            }
        }.start()
        echo = try Socket.connect(host: "127.0.0.1", port: echoListener.localPort)
        accepted.wait()
    }

    func roundTrip(tokens: Int) throws -> Int {
        sequence += 1
        let header = RequestHeader(sequence: sequence, layer: 0, dtype: .bf16, slotsPerToken: 1, tokens: tokens, hidden: hidden)
        let length = payload.ids.withUnsafeBufferPointer { i in payload.weights.withUnsafeBufferPointer { w in payload.states.withUnsafeBytes { s in
            requestBuffer.withUnsafeMutableBytes {
                FrameEncoder.encodeRequest(header, ids: UnsafeBufferPointer(rebasing: i[0..<tokens]), weights: UnsafeBufferPointer(rebasing: w[0..<tokens]),
                                           states: UnsafeRawBufferPointer(rebasing: s[0..<(tokens * hidden * 2)]), into: $0) } } } }
        try requestBuffer.withUnsafeBytes { try connection.write(UnsafeRawBufferPointer(rebasing: $0[0..<length])) }
        guard let bytes = try connection.readFrame(), case .response(let response) = try Frame.decode(bytes) else {
            throw TransportError.timedOut(sequence: sequence, after: .zero)
        }
        return response.header.tokens
    }

    func limit(tokens: Int) throws {
        let request = RequestHeader(sequence: 0, layer: 0, dtype: .bf16, slotsPerToken: 1, tokens: tokens, hidden: hidden).frameSize
        let response = ResponseHeader(sequence: 0, tokens: tokens, hidden: hidden).frameSize
        echoBuffer.storeBytes(of: UInt32(request), toByteOffset: 0, as: UInt32.self)
        echoBuffer.storeBytes(of: UInt32(response), toByteOffset: 4, as: UInt32.self)
        try echo.writeAll(UnsafeRawBufferPointer(rebasing: echoBuffer[0..<8]))
        try echo.writeAll(UnsafeRawBufferPointer(rebasing: echoBuffer[0..<request]))
        _ = try echo.readExactly(UnsafeMutableRawBufferPointer(rebasing: echoBuffer[0..<response]))
    }

    func close() {
        connection.socket.shutdown()
        echo.shutdown()
        finished.wait()
        connection.close()
        echo.close()
        for s in serverSockets { s.close() }
        listener.close()
        echoListener.close()
        echoBuffer.deallocate()
    }
}
