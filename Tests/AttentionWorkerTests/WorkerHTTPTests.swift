import JSON
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import MoE
import Testing
@testable import AttentionWorker

/// `eaas worker` as a process, driven over HTTP like any OpenAI client would.
@Suite("Worker HTTP API", .serialized)
struct WorkerHTTPTests {
    static func post(_ port: Int, _ body: String, path: String = "v1/completions") async throws -> (Int, [String: String], Data) {
        var request = URLRequest(url: URL(string: "http://127.0.0.1:\(port)/\(path)")!)
        request.httpMethod = "POST"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.httpBody = Data(body.utf8)
        request.timeoutInterval = 60
        let (data, response) = try await URLSession.shared.data(for: request)
        let http = response as! HTTPURLResponse
        var headers: [String: String] = [:]
        for (key, value) in http.allHeaderFields { headers["\(key)".lowercased()] = "\(value)" }
        return (http.statusCode, headers, data)
    }

    static func object(_ data: Data) throws -> [String: JSONValue] {
        try #require(try JSONValue.parse(data).object, "not a JSON object: \(String(decoding: data, as: UTF8.self))")
    }

    @Test("completions: token ids like transformers, usage, SSE stream with the same tokens, errors as 400/404 with a message")
    func completions() async throws {
        let fixture = try GenerationFixture("qwen3-moe")
        let worker = try EaasProcess(["worker", "--model", fixture.directory, "--host", "127.0.0.1", "--port", "0", "--log-level", "warning"])
        defer { worker.cleanUp() }
        let prompt = fixture.prompt.map(String.init).joined(separator: ",")

        let (status, _, data) = try await Self.post(worker.port, #"{"prompt": [\#(prompt)], "max_tokens": 16, "temperature": 0, "ignore_eos": true}"#)
        #expect(status == 200)
        let body = try Self.object(data)
        #expect(body["object"] == "text_completion")
        #expect(body["model"] == "qwen3-moe")
        let choice = try #require(body["choices"]?.array?.first?.object)
        #expect(choice["token_ids"]?.array?.compactMap(\.int) == fixture.generated)
        #expect(choice["text"]?.string == fixture.generated.map(String.init).joined(separator: " "))
        #expect(choice["finish_reason"] == "length")
        #expect(body["usage"]?.object?["prompt_tokens"]?.int == fixture.prompt.count)
        #expect(body["usage"]?.object?["completion_tokens"]?.int == 16)
        #expect(body["usage"]?.object?["total_tokens"]?.int == fixture.prompt.count + 16)

        // Two prompts in one request, streamed: each choice's tokens arrive in order, then the
        // finish chunks, the usage chunk, and [DONE].
        let (streamStatus, headers, stream) = try await Self.post(worker.port,
            #"{"prompt": [[\#(prompt)], [7, 8, 9]], "max_tokens": 16, "temperature": 0, "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}}"#)
        #expect(streamStatus == 200)
        #expect(headers["content-type"]?.hasPrefix("text/event-stream") == true)
        let events = String(decoding: stream, as: UTF8.self).components(separatedBy: "\n\n").filter { !$0.isEmpty }
        #expect(events.allSatisfy { $0.hasPrefix("data: ") })
        #expect(events.last == "data: [DONE]")
        var tokens: [Int: [Int]] = [:], finishes: [Int: String] = [:], usage: [String: JSONValue]?
        for event in events.dropLast() {
            let chunk = try Self.object(Data(event.dropFirst(6).utf8))
            if let u = chunk["usage"]?.object { usage = u }
            for choice in chunk["choices"]?.array?.compactMap(\.object) ?? [] {
                let index = choice["index"]!.int!
                tokens[index, default: []] += choice["token_ids"]?.array?.compactMap(\.int) ?? []
                if let reason = choice["finish_reason"]?.string { finishes[index] = reason }
            }
        }
        #expect(tokens[0] == fixture.generated)
        #expect(tokens[1]?.count == 16)
        #expect(finishes == [0: "length", 1: "length"])
        #expect(usage?["completion_tokens"]?.int == 32)
        #expect(usage?["prompt_tokens"]?.int == fixture.prompt.count + 3)

        // Seeded sampling repeats itself.
        let sampled = #"{"prompt": [\#(prompt)], "max_tokens": 12, "temperature": 0.9, "top_p": 0.9, "seed": 5, "ignore_eos": true}"#
        let first = try Self.object(try await Self.post(worker.port, sampled).2)["choices"]
        let second = try Self.object(try await Self.post(worker.port, sampled).2)["choices"]
        #expect(first == second)

        let refusals: [(String, Int, String)] = [
            (#"{"prompt": "hello"}"#, 400, "tokenizer"),
            (#"{"prompt": [1, 2, 64]}"#, 400, "outside the vocabulary"),
            (#"{"prompt": [1, 2], "max_tokens": 0}"#, 400, "max_tokens"),
            (#"{"prompt": [1, 2], "max_tokens": 500}"#, 400, "context"),
            (#"{"prompt": [1], "max_tokens": 9223372036854775807}"#, 400, "context"),
            (#"{"prompt": [1, 2], "temperature": -1}"#, 400, "temperature"),
            (#"{"prompt": [[1, 2], "x"]}"#, 400, "prompt[1]"),
            (#"{"prompt": [1, 2], "stop": ["\n"]}"#, 400, "stop_token_ids"),
            (#"{"max_tokens": 3}"#, 400, "'prompt' is required"),
            (#"{"prompt": [1, 2"#, 400, "not valid JSON"),
            (#"{"prompt": [1, 2], "model": "gpt-4"}"#, 404, "does not exist"),
        ]
        for (body, expected, words) in refusals {
            let (status, _, data) = try await Self.post(worker.port, body)
            #expect(status == expected, "\(body)")
            let message = try Self.object(data)["error"]?.object?["message"]?.string ?? ""
            #expect(message.contains(words), "\(body): \(message)")
        }
        worker.signal(SIGTERM)
        #expect(worker.waitForExit().status == 0)
    }

    @Test("a full worker answers 429 with Retry-After; a client that hangs up frees its place")
    func overload() async throws {
        let worker = try EaasProcess(["worker", "--model", WorkerFixture.directory, "--host", "127.0.0.1", "--port", "0",
                                      "--max-running", "1", "--max-waiting", "0", "--log-level", "warning"])
        defer { worker.cleanUp() }
        // A long streamed generation holds the one running place; read until it has started.
        let long = try RawHTTPStream(port: worker.port, body: #"{"prompt": [5, 6, 7], "max_tokens": 4000, "ignore_eos": true, "stream": true}"#)
        let head = try long.read(until: "data: ")
        #expect(head.hasPrefix("HTTP/1.1 200"))

        let (status, headers, data) = try await Self.post(worker.port, #"{"prompt": [1, 2], "max_tokens": 2}"#)
        #expect(status == 429)
        #expect(headers["retry-after"] == "1")
        #expect(try Self.object(data)["error"]?.object?["message"]?.string?.contains("overloaded") == true)

        long.close()
        var freed = false
        for _ in 0..<100 where !freed {
            freed = try await Self.post(worker.port, #"{"prompt": [1, 2], "max_tokens": 2}"#).0 == 200
            if !freed { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(freed, "the cancelled generation kept its place")
    }
}

/// A request written on a plain socket, read as it streams, and abandoned at will.
final class RawHTTPStream {
    private let fd: Int32

    init(port: Int, body: String) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard connected == 0 else { throw EaasProcess.StartFailure(description: "cannot connect to 127.0.0.1:\(port)") }
        let request = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
        _ = request.withCString { send(fd, $0, strlen($0), 0) }
    }

    /// Reads until `marker` has been seen; returns everything read.
    func read(until marker: String) throws -> String {
        var text = ""
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !text.contains(marker) {
            let n = recv(fd, &buffer, buffer.count, 0)
            guard n > 0 else { break }
            text += String(decoding: buffer[0..<n], as: UTF8.self)
        }
        return text
    }

    func close() { _ = Glibc.close(fd) }
}
