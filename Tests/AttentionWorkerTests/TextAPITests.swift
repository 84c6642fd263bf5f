import Platform
import Foundation
import JSON
import MoE
import Testing
@testable import AttentionWorker
@testable import Text

/// A random Qwen3-MoE of 320 ids with a byte-level tokenizer of 269 ids (the 256 bytes, ten merges,
/// ChatML's special tokens) and ChatML's chat template beside it, as a model directory has them.
enum TextWorkerFixture {
    static let chatML = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

    static let directory: String = {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("eaas-text-fixture-\(getpid())").path
        var spec = RandomModelSpec(architecture: .qwen3Moe, layers: 1, experts: 4, topK: 2, hidden: 64)
        spec.dtype = .f32
        spec.expertFFN = 32
        spec.vocab = 320
        spec.seed = 5
        spec.weightStd = 0.2
        _ = try! RandomModel.write(spec, to: path)
        var vocab: [String: JSONValue] = [:]
        for b in 0..<256 { vocab[String(ByteLevelAlphabet.character(for: UInt8(b)))] = .int(b) }
        let merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("Ġ", "s"), ("r", "e"), ("a", "t")]
        for (k, m) in merges.enumerated() { vocab[m.0 + m.1] = .int(256 + k) }
        let added: [JSONValue] = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"].enumerated().map { k, t in
            ["id": .int(266 + k), "content": .string(t), "special": true, "normalized": false, "lstrip": false, "rstrip": false, "single_word": false]
        }
        let byteLevel: JSONValue = ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true]
        let tokenizer: JSONValue = [
            "version": "1.0", "added_tokens": .array(added), "normalizer": .null, "pre_tokenizer": byteLevel,
            "post_processor": .null, "decoder": byteLevel,
            "model": ["type": "BPE", "vocab": .object(vocab), "merges": .array(merges.map { .string("\($0.0) \($0.1)") })],
        ]
        let config: JSONValue = ["chat_template": .string(chatML), "eos_token": "<|im_end|>", "bos_token": .null]
        try! tokenizer.compactData.write(to: URL(fileURLWithPath: path + "/tokenizer.json"))
        try! config.compactData.write(to: URL(fileURLWithPath: path + "/tokenizer_config.json"))
        return path
    }()

    static var tokenizer: ModelTokenizer { try! ModelTokenizer.load(modelDirectory: directory)! }
}

/// The API speaks text: string prompts, decoded completions, stop strings across tokens, chat
/// through the model's template, streamed pieces that join to the whole answer.
@Suite("Worker text API", .serialized)
struct TextAPITests {
    static func events(_ data: Data) throws -> [[String: JSONValue]] {
        let events = String(decoding: data, as: UTF8.self).components(separatedBy: "\n\n").filter { !$0.isEmpty }
        #expect(events.last == "data: [DONE]")
        return try events.dropLast().map { try WorkerHTTPTests.object(Data($0.dropFirst("data: ".count).utf8)) }
    }

    @Test("completions take text and answer text; streamed pieces join to it; a stop string cuts it, across tokens")
    func textCompletions() async throws {
        let text = TextWorkerFixture.tokenizer
        let worker = try EaasProcess(["worker", "--model", TextWorkerFixture.directory, "--host", "127.0.0.1", "--port", "0", "--log-level", "warning"])
        defer { worker.cleanUp() }
        let request = #"{"prompt": "Tell me about the sea", "max_tokens": 24, "temperature": 0, "ignore_eos": true"#
        let (status, _, data) = try await WorkerHTTPTests.post(worker.port, request + "}")
        #expect(status == 200, "\(String(decoding: data, as: UTF8.self))")
        let choice = try #require(try WorkerHTTPTests.object(data)["choices"]?.array?.first?.object)
        let ids = try #require(choice["token_ids"]?.array).compactMap(\.int)
        let whole = try #require(choice["text"]?.string)
        #expect(ids.count == 24)
        #expect(whole == text.tokenizer.decode(ids, skipSpecialTokens: true))
        #expect(try WorkerHTTPTests.object(data)["usage"]?.object?["prompt_tokens"]?.int == text.tokenizer.encode("Tell me about the sea").count)

        let (_, _, stream) = try await WorkerHTTPTests.post(worker.port, request + #", "stream": true}"#)
        let pieces = try Self.events(stream).compactMap { $0["choices"]?.array?.first?["text"]?.string }
        #expect(pieces.joined() == whole)
        #expect(!pieces.contains { $0.unicodeScalars.contains("\u{FFFD}") && !whole.unicodeScalars.contains("\u{FFFD}") })

        // A stop string from the middle of the answer: the text ends just before it.
        let scalars = Array(whole.unicodeScalars)
        try #require(scalars.count >= 8)
        let stop = String(String.UnicodeScalarView(scalars[4..<7]))
        let expected = String(whole[..<whole.range(of: stop)!.lowerBound])
        let stopRequest = request + ", \"stop\": [\(JSONValue.quoted(stop))]"
        let (_, _, stopped) = try await WorkerHTTPTests.post(worker.port, stopRequest + "}")
        let stoppedChoice = try #require(try WorkerHTTPTests.object(stopped)["choices"]?.array?.first?.object)
        #expect(stoppedChoice["text"]?.string == expected)
        #expect(stoppedChoice["finish_reason"] == "stop")
        let (_, _, stoppedStream) = try await WorkerHTTPTests.post(worker.port, stopRequest + #", "stream": true}"#)
        let streamed = try Self.events(stoppedStream)
        #expect(streamed.compactMap { $0["choices"]?.array?.first?["text"]?.string }.joined() == expected)
        #expect(streamed.last?["choices"]?.array?.first?["finish_reason"] == "stop")

        // A list of string prompts is several choices.
        let (_, _, two) = try await WorkerHTTPTests.post(worker.port, #"{"prompt": ["a", "b c"], "max_tokens": 2}"#)
        #expect(try WorkerHTTPTests.object(two)["choices"]?.array?.count == 2)
    }

    @Test("chat completions render the template, answer a message, stream deltas with the role first, and report usage")
    func chatCompletions() async throws {
        let text = TextWorkerFixture.tokenizer
        let worker = try EaasProcess(["worker", "--model", TextWorkerFixture.directory, "--host", "127.0.0.1", "--port", "0", "--log-level", "warning"])
        defer { worker.cleanUp() }
        let messages = #"[{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi there"}]}]"#
        let request = #"{"messages": \#(messages), "max_completion_tokens": 12, "temperature": 0, "ignore_eos": true"#
        let (status, _, data) = try await WorkerHTTPTests.post(worker.port, request + "}", path: "v1/chat/completions")
        #expect(status == 200, "\(String(decoding: data, as: UTF8.self))")
        let body = try WorkerHTTPTests.object(data)
        #expect(body["object"] == "chat.completion")
        #expect((body["id"]?.string ?? "").hasPrefix("chatcmpl-"))
        let choice = try #require(body["choices"]?.array?.first?.object)
        #expect(choice["message"]?["role"] == "assistant")
        let content = try #require(choice["message"]?["content"]?.string)
        let prompt = try text.chatPrompt([.init(role: "system", content: "Be brief."), .init(role: "user", content: "Hi there")])
        #expect(body["usage"]?["prompt_tokens"]?.int == prompt.count)
        #expect(body["usage"]?["completion_tokens"]?.int == 12)
        #expect(prompt.first == text.tokenizer.id(for: "<|im_start|>"))

        let (_, _, stream) = try await WorkerHTTPTests.post(worker.port, request + #", "stream": true, "stream_options": {"include_usage": true}}"#,
                                                           path: "v1/chat/completions")
        let chunks = try Self.events(stream)
        #expect(chunks.allSatisfy { $0["object"] == "chat.completion.chunk" })
        #expect(chunks.first?["choices"]?.array?.first?["delta"]?["role"] == "assistant")
        let deltas = chunks.compactMap { $0["choices"]?.array?.first?["delta"]?["content"]?.string }
        #expect(deltas.joined() == content)
        #expect(chunks.dropLast().last?["choices"]?.array?.first?["finish_reason"] == "length")
        #expect(chunks.last?["usage"]?["completion_tokens"]?.int == 12)
    }

    @Test("bad text requests are refused with the field named; a worker without a tokenizer says what it needs", arguments: [
        (#"{"messages": []}"#, "v1/chat/completions", "messages"),
        (#"{"messages": [{"role": "user", "content": 5}]}"#, "v1/chat/completions", "messages"),
        (#"{"messages": [{"content": "x"}]}"#, "v1/chat/completions", "messages"),
        (#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}"#, "v1/chat/completions", "messages"),
        (#"{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}"#, "v1/chat/completions", "tools"),
        (#"{"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}"#, "v1/chat/completions", "max_completion_tokens"),
        (#"{"prompt": "x", "stop": [""]}"#, "v1/completions", "stop"),
        (#"{"prompt": "x", "stop": 3}"#, "v1/completions", "stop"),
        (#"{"prompt": ["x", 3]}"#, "v1/completions", "prompt"),
        (#"{"prompt": ""}"#, "v1/completions", "prompt"),
    ])
    func refusals(_ body: String, _ path: String, _ param: String) async throws {
        let worker = try EaasProcess(["worker", "--model", TextWorkerFixture.directory, "--host", "127.0.0.1", "--port", "0", "--log-level", "warning"])
        defer { worker.cleanUp() }
        let (status, _, data) = try await WorkerHTTPTests.post(worker.port, body, path: path)
        #expect(status == 400)
        #expect(try WorkerHTTPTests.object(data)["error"]?["param"]?.string == param, "\(String(decoding: data, as: UTF8.self))")
    }

    @Test("hostile sizes are refused with the field named: too many or too long stop strings, too many messages, a prompt the template would render past its bound")
    func hostileSizes() async throws {
        let worker = try EaasProcess(["worker", "--model", TextWorkerFixture.directory, "--host", "127.0.0.1", "--port", "0", "--log-level", "warning"])
        defer { worker.cleanUp() }
        let manyStops = "[" + (0..<17).map { "\"s\($0)\"" }.joined(separator: ",") + "]"
        let longStop = JSONValue.quoted(String(repeating: "x", count: 1_001))
        let message = #"{"role": "user", "content": "hi"}"#
        let manyMessages = "[" + Array(repeating: message, count: 4_097).joined(separator: ",") + "]"
        let huge = JSONValue.quoted(String(repeating: "a", count: 5 << 20))
        let cases: [(String, String, String)] = [
            (#"{"prompt": "x", "stop": \#(manyStops)}"#, "v1/completions", "stop"),
            (#"{"prompt": "x", "stop": [\#(longStop)]}"#, "v1/completions", "stop"),
            (#"{"messages": \#(manyMessages)}"#, "v1/chat/completions", "messages"),
            (#"{"messages": [{"role": "user", "content": \#(huge)}]}"#, "v1/chat/completions", "messages"),
        ]
        for (body, path, param) in cases {
            let (status, _, data) = try await WorkerHTTPTests.post(worker.port, body, path: path)
            #expect(status == 400, "\(path) \(param): \(status)")
            #expect(try WorkerHTTPTests.object(data)["error"]?["param"]?.string == param, "\(String(decoding: data.prefix(300), as: UTF8.self))")
        }
        // Still serving afterwards.
        let (status, _, _) = try await WorkerHTTPTests.post(worker.port, #"{"prompt": "x", "max_tokens": 1}"#)
        #expect(status == 200)
    }

    @Test("without a tokenizer: chat is refused, and so are text prompts and stop strings, saying why")
    func noTokenizer() async throws {
        let worker = try EaasProcess(["worker", "--model", WorkerFixture.directory, "--host", "127.0.0.1", "--port", "0", "--log-level", "warning"])
        defer { worker.cleanUp() }
        let (chat, _, chatBody) = try await WorkerHTTPTests.post(worker.port, #"{"messages": [{"role": "user", "content": "x"}]}"#, path: "v1/chat/completions")
        #expect(chat == 400)
        #expect(String(decoding: chatBody, as: UTF8.self).contains("no tokenizer"))
        let (prompt, _, promptBody) = try await WorkerHTTPTests.post(worker.port, #"{"prompt": "x"}"#)
        #expect(prompt == 400)
        #expect(String(decoding: promptBody, as: UTF8.self).contains("no tokenizer"))
    }

    @Test("a tokenizer with more ids than the model's vocabulary is refused at start")
    func mismatchedTokenizer() throws {
        let tokenizer = TextWorkerFixture.directory + "/tokenizer.json"
        #expect(throws: EaasProcess.StartFailure.self) {
            let worker = try EaasProcess(["worker", "--model", WorkerFixture.directory, "--tokenizer", tokenizer, "--host", "127.0.0.1", "--port", "0"])
            worker.cleanUp()
        }
    }
}

/// Stop strings against a stream of text pieces: held back while they might still match, cut
/// where they start, never emitted.
struct CompletionTextTests {
    @Test func stopsAcrossTokensAndHoldsBackOnlyWhatCouldMatch() throws {
        let tokenizer = TextWorkerFixture.tokenizer.tokenizer
        let ids = tokenizer.encode("the end of the story", addSpecialTokens: false)
        var text = CompletionText(tokenizer: tokenizer, stops: ["of th", "zzz"])
        var out = ""
        for id in ids {
            out += text.append(id)
            if text.stopped { break }
        }
        #expect(text.stopped)
        #expect(out == "the end ")
        #expect(text.text == "the end ")
        var plain = CompletionText(tokenizer: tokenizer, stops: ["zzz"])
        var all = ""
        for id in ids { all += plain.append(id) }
        all += plain.finish()
        #expect(all == "the end of the story")
        #expect(!plain.stopped)
    }
}

/// A Python with the official `openai` client: `$EAAS_OPENAI_PYTHON`, else the repository's `.venv`.
let openAIPython: String? = {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    let candidates = [ProcessInfo.processInfo.environment["EAAS_OPENAI_PYTHON"], root + "/.venv/bin/python"].compactMap { $0 }
    for python in candidates where FileManager.default.isExecutableFile(atPath: python) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = ["-c", "import openai"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { continue }
        process.waitUntilExit()
        if process.terminationStatus == 0 { return python }
    }
    return nil
}()

/// How users will call it: the official `openai` client, completions and chat, streamed and not.
@Suite("openai client against eaas worker", .serialized)
struct OpenAIClientTests {
    @Test("the openai client gets text completions and chat answers, streamed and whole alike",
          .enabled(if: openAIPython != nil, "no Python with the `openai` package (scripts/install-test-clients installs it into .venv): skipped"))
    func openAIClient() async throws {
        let worker = try EaasProcess(["worker", "--model", TextWorkerFixture.directory, "--host", "127.0.0.1", "--port", "0", "--log-level", "warning"])
        defer { worker.cleanUp() }
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("openai_client_check.py").path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: openAIPython!)
        process.arguments = [script, "http://127.0.0.1:\(worker.port)/v1", URL(fileURLWithPath: TextWorkerFixture.directory).lastPathComponent]
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        // Both pipes drained on threads of their own, off the concurrency pool.
        let (data, errors) = try await offPool { () -> (Data, Data) in
            final class Box: @unchecked Sendable { var data = Data() }
            let errorBox = Box(), done = DispatchSemaphore(value: 0)
            Thread { errorBox.data = err.fileHandleForReading.readDataToEndOfFile(); done.signal() }.start()
            let data = out.fileHandleForReading.readDataToEndOfFile()
            done.wait()
            process.waitUntilExit()
            return (data, errorBox.data)
        }
        try #require(process.terminationStatus == 0, "\(String(decoding: errors, as: UTF8.self))")
        let result = try WorkerHTTPTests.object(data)
        let text = TextWorkerFixture.tokenizer
        #expect(result["models"]?.array?.count == 1)
        #expect(result["completion_stream_equal"] == true)
        #expect(result["completion_finish"] == "length")
        #expect(result["completion_usage"]?.array?.map(\.int) == [text.tokenizer.encode("The sea is").count, 10])
        #expect(result["chat_role"] == "assistant")
        let content = result["chat_content"]?.string ?? ""
        #expect(content.isEmpty == false)
        #expect(result["chat_stream_equal"] == true)
        #expect(result["chat_stream_roles"] == ["assistant"])
        #expect(result["chat_stream_usage"] == result["chat_usage"])
        #expect(result["empty_messages_error"] == 400)
    }
}
