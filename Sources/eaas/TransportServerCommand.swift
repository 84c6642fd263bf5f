import ArgumentParser
import Dispatch
import Foundation
import Transport

/// `eaas transport-server`: a data-plane server with synthetic experts (expert `e` adds `e` to
/// each hidden value), to test and benchmark the data plane between processes without weights.
/// It speaks exactly what an expert pod speaks; SIGTERM drains it (GOAWAY, wait for clients to
/// leave, exit 0).
struct TransportServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "transport-server",
        abstract: "Serve synthetic experts over the data plane (tcp and shm), for tests and benchmarks.",
        discussion: """
        Prints one line 'listening HOST:PORT' on stdout once it accepts clients. The pool token is \
        read from the file given by --pool-token-file or from EAAS_POOL_TOKEN, never from the \
        command line (where other users could read it).
        """
    )

    @Option(help: "Address to listen on, HOST:PORT (port 0 picks a free one).") var listen: String = "127.0.0.1:0"
    @Option(help: "Hosted experts as LAYER:IDS, e.g. 0:0-7,12; repeat for more layers.") var experts: [String] = ["0:0-7"]
    @Option(help: "Hidden size of the states.") var hidden: Int = 4096
    @Option(help: "Hidden-state dtype on the wire: f32, bf16 or f16.") var dtype: String = "bf16"
    @Option(help: "Server id in handshake replies.") var id: UInt64 = 1
    @Option(help: "File holding the pool token (default: $EAAS_POOL_TOKEN).") var poolTokenFile: String?
    @Flag(help: "Offer only tcp, no shared-memory slots.") var noShm = false
    @Option(help: "Shared-memory slots (the most shm clients at once).") var slots: Int = 32
    @Option(help: "Largest request in tokens.") var maxBatch: Int = 512
    @Option(help: "Extra microseconds per request, to simulate heavier experts.") var delayUs: Int = 0
    @Option(help: "Seconds a SIGTERM drain waits for clients to leave.") var drainSeconds: Double = 30

    func validate() throws {
        _ = try parsedListen()
        _ = try parsedExperts()
        guard parsedDType() != nil else { throw ValidationError("--dtype '\(dtype)' is not f32, bf16 or f16") }
        guard hidden >= 1, hidden <= 65_536 else { throw ValidationError("--hidden must be between 1 and 65536") }
        guard slots >= 1, slots <= 4096 else { throw ValidationError("--slots must be between 1 and 4096") }
        guard maxBatch >= 1, maxBatch <= 65_536 else { throw ValidationError("--max-batch must be between 1 and 65536") }
        guard delayUs >= 0, drainSeconds >= 0 else { throw ValidationError("--delay-us and --drain-seconds cannot be negative") }
    }

    func parsedListen() throws -> (host: String, port: Int) {
        guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]), (0...65_535).contains(port) else {
            throw ValidationError("--listen '\(listen)' is not HOST:PORT")
        }
        return (String(listen[..<colon]), port)
    }

    func parsedExperts() throws -> [HostedExpert] {
        var hosted: Set<HostedExpert> = []
        for spec in experts {
            let parts = spec.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, let layer = UInt16(parts[0]) else { throw ValidationError("--experts '\(spec)' is not LAYER:IDS (e.g. 0:0-7)") }
            for range in parts[1].split(separator: ",") {
                let bounds = range.split(separator: "-", maxSplits: 1).map { UInt16($0) }
                guard let low = bounds.first ?? nil, let high = bounds.last ?? nil, low <= high, high < RequestHeader.emptySlot else {
                    throw ValidationError("--experts '\(spec)': '\(range)' is not an expert id or an ascending range below 65535")
                }
                for e in low...high { hosted.insert(HostedExpert(layer: layer, expert: e)) }
            }
        }
        guard !hosted.isEmpty else { throw ValidationError("--experts names no expert") }
        return hosted.sorted()
    }

    func parsedDType() -> WireDType? { ["f32": .f32, "bf16": .bf16, "f16": .f16][dtype] }

    func run() throws {
        let (host, port) = try parsedListen()
        var configuration = DataPlaneServer.Configuration(poolToken: try PoolTokenSource.read(file: poolTokenFile), serverID: id)
        configuration.host = host
        configuration.port = port
        configuration.offerShm = !noShm
        configuration.slots = slots
        configuration.maxBatchTokens = maxBatch
        let computer = SyntheticExperts(experts: try parsedExperts(), hidden: hidden, dtype: parsedDType()!, delay: .microseconds(delayUs))
        let refusals = HandshakeRefusalLog { FileHandle.standardError.write(Data("transport-server: \($0)\n".utf8)) }
        let server = try DataPlaneServer(computer: computer, configuration: configuration, refusalObserver: { refusals.note($0) })
        let terminated = DispatchSemaphore(value: 0)
        var sources: [DispatchSourceSignal] = []
        for number in [SIGTERM, SIGINT] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { terminated.signal() }
            source.resume()
            sources.append(source)
        }
        server.start()
        // Unbuffered, so that a parent process reading the pipe sees it at once.
        FileHandle.standardOutput.write(Data(("listening \(host):\(server.port)" + (server.regionPath.map { " region \($0)" } ?? "") + "\n").utf8))
        terminated.wait()
        let left = server.drain(timeout: .milliseconds(Int64(drainSeconds * 1000)), reason: "SIGTERM: draining")
        server.stop()
        FileHandle.standardError.write(Data("drained: \(left ? "every client left" : "clients still connected at the deadline"); served \(server.served) requests\n".utf8))
        sources.forEach { $0.cancel() }
    }
}
