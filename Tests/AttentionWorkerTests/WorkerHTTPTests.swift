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

        // The longest prompt the context holds leaves no room to generate: the prompt is named.
        let config = try Self.object(try Data(contentsOf: URL(fileURLWithPath: fixture.directory + "/config.json")))
        let context = try #require(config["max_position_embeddings"]?.int)
        let tooLong = Array(repeating: "1", count: context).joined(separator: ",")
        // (body, status, words in the message, the parameter named)
        let refusals: [(String, Int, String, String?)] = [
            (#"{"prompt": "hello"}"#, 400, "tokenizer", "prompt"),
            (#"{"prompt": [1, 2, 64]}"#, 400, "outside the vocabulary", "prompt"),
            (#"{"prompt": [1, 2], "max_tokens": 0}"#, 400, "max_tokens", "max_tokens"),
            (#"{"prompt": [1, 2], "max_tokens": 500}"#, 400, "context", "max_tokens"),
            (#"{"prompt": [1], "max_tokens": 9223372036854775807}"#, 400, "context", "max_tokens"),
            (#"{"prompt": [\#(tooLong)], "max_tokens": 1}"#, 400, "context", "prompt"),
            (#"{"prompt": [1, 2], "temperature": -1}"#, 400, "temperature", "temperature"),
            (#"{"prompt": [[1, 2], "x"]}"#, 400, "prompt[1]", "prompt"),
            (#"{"prompt": [1, 2], "stop": ["\n"]}"#, 400, "stop_token_ids", "stop"),
            (#"{"max_tokens": 3}"#, 400, "'prompt' is required", "prompt"),
            (#"{"prompt": [1, 2"#, 400, "not valid JSON", nil),
            (#"{"prompt": [1, 2], "model": "gpt-4"}"#, 404, "does not exist", "model"),
        ]
        for (body, expected, words, param) in refusals {
            let (status, _, data) = try await Self.post(worker.port, body)
            #expect(status == expected, "\(body.prefix(80))")
            let error = try Self.object(data)["error"]?.object
            let message = error?["message"]?.string ?? ""
            #expect(message.contains(words), "\(body.prefix(80)): \(message)")
            #expect(error?["param"]?.string == param, "\(body.prefix(80)): param \(String(describing: error?["param"]))")
        }

        // A path that exists answers a wrong method with 405 and the method it takes.
        for (method, path, allowed) in [("GET", "v1/completions", "POST"), ("DELETE", "v1/completions", "POST"), ("POST", "v1/models", "GET")] {
            var request = URLRequest(url: URL(string: "http://127.0.0.1:\(worker.port)/\(path)")!)
            request.httpMethod = method
            let (data, response) = try await URLSession.shared.data(for: request)
            let http = try #require(response as? HTTPURLResponse)
            #expect(http.statusCode == 405, "\(method) /\(path)")
            #expect(http.value(forHTTPHeaderField: "Allow") == allowed, "\(method) /\(path)")
            #expect(try Self.object(data)["error"]?.object?["message"]?.string?.contains("not allowed") == true)
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

    @Test("requests whose headers or body trickle in are cut off at their deadline (not an idle timer); others are served meanwhile")
    func slowRequestsAreCutOff() async throws {
        let worker = try EaasProcess(["worker", "--model", WorkerFixture.directory, "--host", "127.0.0.1", "--port", "0",
                                      "--header-timeout-seconds", "1", "--body-timeout-seconds", "2", "--log-level", "warning"])
        defer { worker.cleanUp() }
        let started = ContinuousClock.now
        // 100 slowloris connections: half never finish their headers, half never finish a body
        // they announced; each gets one more byte every 200 ms, far inside any idle timeout.
        var headers = try (0..<50).map { _ in try RawSocket(port: worker.port, send: "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ") }
        var bodies = try (0..<50).map { _ in
            try RawSocket(port: worker.port, send: "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"prompt\": [1, ")
        }
        var headerClosed: [Duration] = [], bodyClosed: [Duration] = []
        var served = false
        while (!headers.isEmpty || !bodies.isEmpty), ContinuousClock.now - started < .seconds(15) {
            headers.removeAll { socket in
                guard socket.trickle("a") else { headerClosed.append(ContinuousClock.now - started); return true }
                return false
            }
            bodies.removeAll { socket in
                guard socket.trickle(" ") else { bodyClosed.append(ContinuousClock.now - started); return true }
                return false
            }
            if !served {
                // An ordinary client is answered while the slow ones are held.
                served = try await Self.post(worker.port, #"{"prompt": [1, 2], "max_tokens": 2}"#).0 == 200
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        print("slow requests: headers cut off after \(headerClosed.min().map { "\($0)" } ?? "-")–\(headerClosed.max().map { "\($0)" } ?? "-"), "
              + "bodies after \(bodyClosed.min().map { "\($0)" } ?? "-")–\(bodyClosed.max().map { "\($0)" } ?? "-"); \(headers.count + bodies.count) still open")
        #expect(served, "an ordinary request was not answered while slow ones were open")
        #expect(headers.isEmpty && bodies.isEmpty, "\(headers.count) trickling headers and \(bodies.count) trickling bodies were never cut off")
        #expect(headerClosed.count == 50 && headerClosed.allSatisfy { $0 >= .milliseconds(800) && $0 < .seconds(6) })
        #expect(bodyClosed.count == 50 && bodyClosed.allSatisfy { $0 >= .milliseconds(1800) && $0 < .seconds(8) })
    }

    @Test("a stream nobody reads is abandoned: its sequence stops short of max_tokens, its place is freed, the connection ends without [DONE]")
    func unreadStreamStops() async throws {
        let worker = try EaasProcess(["worker", "--model", WorkerFixture.directory, "--host", "127.0.0.1", "--port", "0",
                                      "--max-running", "1", "--max-waiting", "0", "--stream-stall-seconds", "1", "--log-level", "warning"])
        defer { worker.cleanUp() }
        // A client with a small receive window that reads the first event and then nothing.
        let stalled = try RawHTTPStream(port: worker.port, body: #"{"prompt": [5, 6, 7], "max_tokens": 4000, "ignore_eos": true, "stream": true}"#,
                                        receiveBuffer: 4096)
        #expect(try stalled.read(until: "data: ").hasPrefix("HTTP/1.1 200"))
        let stopped = ContinuousClock.now
        // Its running place comes free although the client never hung up.
        var freed: Duration?
        while freed == nil, ContinuousClock.now - stopped < .seconds(60) {
            if try await Self.post(worker.port, #"{"prompt": [1, 2], "max_tokens": 2}"#).0 == 200 { freed = ContinuousClock.now - stopped }
            else { try await Task.sleep(for: .milliseconds(100)) }
        }
        // What the client gets when it reads again: what was buffered, then the end, short of 4000 tokens.
        let rest = try stalled.read(until: "data: [DONE]")
        let tokens = rest.components(separatedBy: "\"token_ids\":[").count - 1
        print("unread stream: place freed after \(freed.map { "\($0)" } ?? "never"); the client had \(tokens + 1) of 4000 tokens buffered")
        #expect(freed != nil, "the unread stream kept its running place")
        #expect(!rest.contains("[DONE]"), "the abandoned stream ended as if complete")
        #expect(tokens < 3999, "the sequence generated to max_tokens for a client that read nothing")
    }
}

/// A request written on a plain socket, read as it streams, and abandoned at will.
final class RawHTTPStream {
    private let fd: Int32

    init(port: Int, body: String, receiveBuffer: Int32? = nil) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        if var size = receiveBuffer { setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size)) }
        try connectLoopback(fd, port: port)
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

/// Connects `fd` to 127.0.0.1:`port`.
func connectLoopback(_ fd: Int32, port: Int) throws {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    guard connected == 0 else { throw EaasProcess.StartFailure(description: "cannot connect to 127.0.0.1:\(port)") }
}

/// A connection that sends its request a byte at a time, to see when the server cuts it off.
final class RawSocket {
    private let fd: Int32

    init(port: Int, send first: String) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        try connectLoopback(fd, port: port)
        _ = first.withCString { Glibc.send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
    }

    /// Sends one more byte; false once the server has closed the connection.
    func trickle(_ byte: Character) -> Bool {
        var probe: UInt8 = 0
        let peeked = recv(fd, &probe, 1, Int32(MSG_DONTWAIT | MSG_PEEK))
        if peeked == 0 || (peeked < 0 && errno != EAGAIN && errno != EWOULDBLOCK) { return false }
        var value = byte.asciiValue ?? 0x20
        return Glibc.send(fd, &value, 1, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) == 1
    }

    deinit { close(fd) }
}
