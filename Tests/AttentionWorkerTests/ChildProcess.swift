import Foundation
import Platform
import Transport
import Testing

/// An `eaas` child process (the binary built beside the test bundle) whose first stdout line
/// says where it listens.
final class EaasProcess: @unchecked Sendable {
    static let binary: String = {
        var directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        if directory.lastPathComponent.hasSuffix(".xctest") { directory = directory.deletingLastPathComponent() }
        return directory.appendingPathComponent("eaas").path
    }()

    struct StartFailure: Error, CustomStringConvertible { let description: String }

    private(set) var process: ChildProcess!
    private let errors = Pipe()
    /// The words of the first stdout line ("listening 127.0.0.1:PORT …").
    let announcement: [String]

    init(_ arguments: [String], environment: [String: String] = [:]) throws {
        let out = Pipe()
        process = try ChildProcess(executable: Self.binary, arguments: arguments,
                                   environment: ProcessInfo.processInfo.environment.merging(environment) { $1 },
                                   standardOutput: .pipe(out), standardError: .pipe(errors))
        var line = Data()
        while !line.contains(UInt8(ascii: "\n")) {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            line.append(chunk)
        }
        announcement = String(decoding: line, as: UTF8.self).split(whereSeparator: \.isWhitespace).map(String.init)
        guard announcement.first == "listening", announcement.count >= 2 else {
            let problem = String(decoding: errors.fileHandleForReading.availableData, as: UTF8.self)
            if process.isRunning { process.terminate() }
            throw StartFailure(description: "eaas \(arguments.first ?? "") did not start: \(announcement.joined(separator: " ")) \(problem)")
        }
    }

    /// `host:port` of the first address announced.
    var address: String { announcement[1] }
    var port: Int { Int(address.split(separator: ":").last!)! }

    func signal(_ number: Int32) { kill(process.processIdentifier, number) }

    func waitForExit() -> (status: Int32, stderr: String) {
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
    }

    func cleanUp() {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        DataPlaneServer.removeRegions(leftBy: process.pid)
    }
}

/// A small random Qwen3-MoE checkpoint (8 experts, top-2, hidden 64, f32, 2 layers, 4096
/// positions) written once per test process.
enum WorkerFixture {
    static let directory: String = {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("eaas-worker-fixture-\(getpid())").path
        var spec = RandomModelSpec(architecture: .qwen3Moe, layers: 2, experts: 8, topK: 2, hidden: 64)
        spec.dtype = .f32
        spec.expertFFN = 32
        spec.vocab = 256
        spec.seed = 11
        spec.weightStd = 0.2
        _ = try! RandomModel.write(spec, to: path)
        return path
    }()
}

import MoE
