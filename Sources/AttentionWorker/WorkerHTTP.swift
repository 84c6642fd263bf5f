import Foundation
import Hummingbird
import JSON
import Logging
import NIOCore
import Text

/// The worker's HTTP API: `POST /v1/completions` (OpenAI's shape; prompts as text or token ids,
/// `stream` as server-sent events), `POST /v1/chat/completions` (messages through the model's chat
/// template; needs a tokenizer), `GET /v1/models`, `/healthz`, `/readyz`.
///
/// Overload: requests beyond the engine's running sequences queue (up to its `maxWaiting`); past
/// that the answer is 429 with `Retry-After`, and nothing of the request is kept.
public enum WorkerHTTP {
    /// Largest request body read.
    public static let maxBodyBytes = 16 << 20

    public static func router(engine: GenerationEngine, tokenizer: ModelTokenizer? = nil, limits: WorkerServer.Limits = .init(),
                              logger: Logger = Logger(label: "eaas.worker.http")) -> Router<WorkerRequestContext> {
        let router = Router(context: WorkerRequestContext.self)
        router.get("healthz") { _, _ in "ok\n" }
        router.get("readyz") { _, _ -> Response in
            let ready = engine.isAccepting
            return Response(status: ready ? .ok : .serviceUnavailable, body: ResponseBody(byteBuffer: ByteBuffer(string: ready ? "ready\n" : "not ready\n")))
        }
        router.get("v1/models") { _, _ -> Response in
            let body = ModelList(data: [.init(id: engine.modelName, created: Int(Date().timeIntervalSince1970))])
            return json(status: .ok, (try? JSONEncoder().encode(body)) ?? Data())
        }
        // Other methods on the API's paths are 405 with Allow, not 404: the path exists.
        for (path, allowed) in [("v1/completions", "POST"), ("v1/chat/completions", "POST"), ("v1/models", "GET")] {
            for method in [HTTPRequest.Method.get, .post, .put, .delete, .patch] where method.rawValue != allowed {
                router.on(RouterPath(path), method: method) { _, _ -> Response in
                    var response = failure(CompletionError(status: 405, type: "invalid_request_error",
                                                           message: "\(method.rawValue) is not allowed on /\(path); use \(allowed)", param: nil))
                    response.headers[.allow] = allowed
                    return response
                }
            }
        }
        router.post("v1/completions") { request, context -> Response in
            let body: ByteBuffer
            do { body = try await request.body.collect(upTo: maxBodyBytes) } catch is NIOTooManyBytesError {
                return failure(CompletionError(status: 413, type: "invalid_request_error", message: "the body is larger than \(maxBodyBytes) bytes", param: nil))
            }
            let completion: CompletionRequest
            do throws(CompletionError) {
                completion = try CompletionRequest(json: Data(buffer: body), seed: UInt64.random(in: 0...UInt64.max), tokenizer: tokenizer)
            } catch {
                return failure(error)
            }
            return await serve(completion, style: ResponseStyle(kind: .completion, tokenizer: tokenizer?.tokenizer, stops: completion.stopStrings),
                               engine: engine, limits: limits, channel: context.channel, logger: logger)
        }
        router.post("v1/chat/completions") { request, context -> Response in
            let body: ByteBuffer
            do { body = try await request.body.collect(upTo: maxBodyBytes) } catch is NIOTooManyBytesError {
                return failure(CompletionError(status: 413, type: "invalid_request_error", message: "the body is larger than \(maxBodyBytes) bytes", param: nil))
            }
            let chat: ChatCompletionRequest
            do throws(CompletionError) {
                chat = try ChatCompletionRequest(json: Data(buffer: body), seed: UInt64.random(in: 0...UInt64.max), tokenizer: tokenizer)
            } catch {
                return failure(error)
            }
            return await serve(chat.completion, style: ResponseStyle(kind: .chat, tokenizer: tokenizer?.tokenizer, stops: chat.completion.stopStrings),
                               engine: engine, limits: limits, channel: context.channel, logger: logger)
        }
        return router
    }

    /// What the choices of an answer carry: completion text or chat messages; the text decoded
    /// when there is a tokenizer (cut at stop strings), else the ids written as numbers.
    struct ResponseStyle: Sendable {
        enum Kind: Sendable { case completion, chat }
        let kind: Kind
        let tokenizer: Tokenizer?
        let stops: [String]

        var idPrefix: String { kind == .chat ? "chatcmpl-" : "cmpl-" }
        func text() -> CompletionText? { tokenizer.map { CompletionText(tokenizer: $0, stops: stops) } }
    }

    private static func serve(_ completion: CompletionRequest, style: ResponseStyle, engine: GenerationEngine, limits: WorkerServer.Limits,
                              channel: any Channel, logger: Logger) async -> Response {
        if let model = completion.model, model != engine.modelName {
            return failure(CompletionError(status: 404, type: "invalid_request_error",
                                           message: "the model '\(model)' does not exist; this worker serves '\(engine.modelName)'", param: "model"))
        }
        guard completion.prompts.count <= engine.capacity else {
            return failure(.invalid("\(completion.prompts.count) prompts are more than this worker ever holds at once (\(engine.capacity)); send fewer per request",
                                    param: "prompt"))
        }
        let submitted: [(events: AsyncStream<GenerationEvent>, handle: GenerationEngine.Handle)]
        do throws(CompletionError) {
            submitted = try submitAll(completion.generationRequests, to: engine)
        } catch {
            return failure(error)
        }
        let id = style.idPrefix + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        let created = Int(Date().timeIntervalSince1970)
        let promptLengths = completion.prompts.map(\.count)
        if completion.stream {
            let watch = StreamWriteWatch(stallLimit: limits.streamStallTimeout, maxUnsent: limits.maxUnsentEvents)
            return streaming(submitted, promptLengths: promptLengths, style: style, id: id, created: created, model: engine.modelName,
                             includeUsage: completion.includeUsage, watch: watch, channel: channel, logger: logger)
        }
        return await whole(submitted, promptLengths: promptLengths, style: style, id: id, created: created, model: engine.modelName)
    }

    /// Submits every prompt or none, as one group (the engine admits them together or refuses
    /// them all, naming the prompt at fault): nothing of a refused request is ever queued or run.
    /// Each prompt's events come as its own stream; ending a stream's iteration cancels its sequence.
    private static func submitAll(_ requests: [GenerationRequest], to engine: GenerationEngine) throws(CompletionError)
        -> [(events: AsyncStream<GenerationEvent>, handle: GenerationEngine.Handle)] {
        let streams = requests.map { _ in AsyncStream<GenerationEvent>.makeStream() }
        let continuations = streams.map(\.continuation)
        let handles: [GenerationEngine.Handle]
        do throws(SubmitError) {
            handles = try engine.submit(requests) { index, event in
                continuations[index].yield(event)
                switch event {
                case .token: break
                case .finished, .failed: continuations[index].finish()
                }
            }
        } catch {
            throw CompletionError(error)
        }
        for (continuation, handle) in zip(continuations, handles) {
            continuation.onTermination = { reason in
                if case .cancelled = reason { handle.cancel() }
            }
        }
        return zip(streams, handles).map { ($0.stream, $1) }
    }

    /// Waits for every sequence and answers once.
    private static func whole(_ submitted: [(events: AsyncStream<GenerationEvent>, handle: GenerationEngine.Handle)], promptLengths: [Int],
                              style: ResponseStyle, id: String, created: Int, model: String) async -> Response {
        var choices: [AnswerChoice] = []
        var usage = CompletionBody.Usage()
        for (index, (stream, handle)) in submitted.enumerated() {
            var tokens: [Int] = []
            var reason: String?
            var text = style.text()
            events: for await event in stream {
                switch event {
                case .token(let token):
                    tokens.append(token)
                    if text != nil {
                        _ = text!.append(token)
                        if text!.stopped {
                            // A stop string: the sequence ends here, whatever the engine would do next.
                            handle.cancel()
                            reason = FinishReason.stop.rawValue
                            usage.prompt_tokens += promptLengths[index]
                            usage.completion_tokens += tokens.count
                            break events
                        }
                    }
                case let .finished(finish, prompt, completion):
                    reason = finish.rawValue
                    usage.prompt_tokens += prompt
                    usage.completion_tokens += completion
                    if text != nil { _ = text!.finish() }
                case .failed(let reason):
                    return failure(CompletionError(reason))
                }
            }
            guard let reason else { return failure(CompletionError(status: 503, type: "server_error", message: "generation ended early", param: nil)) }
            choices.append(AnswerChoice(index: index, text: text?.text ?? CompletionBody.text(tokens), tokens: tokens, finishReason: reason))
        }
        let body = style.kind == .chat
            ? ChatAnswer.whole(id: id, created: created, model: model, choices: choices, usage: usage)
            : CompletionBody(id: id, created: created, model: model,
                             choices: choices.map { .init(index: $0.index, text: $0.text, token_ids: $0.tokens, logprobs: nil, finish_reason: $0.finishReason) },
                             usage: usage).json()
        return json(status: .ok, body)
    }

    /// Server-sent events: one chunk per token (per prompt, as tokens come), a chunk with the
    /// finish reason, the usage chunk when asked, then `data: [DONE]`.
    ///
    /// A client that stops reading does not keep its sequences generating: `watch` abandons the
    /// stream (sequences cancelled, connection closed) once a write has waited its stall limit or
    /// too many events wait unsent.
    private static func streaming(_ submitted: [(events: AsyncStream<GenerationEvent>, handle: GenerationEngine.Handle)],
                                  promptLengths: [Int], style: ResponseStyle, id: String, created: Int, model: String, includeUsage: Bool,
                                  watch: StreamWriteWatch, channel: any Channel, logger: Logger) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "text/event-stream"
        headers[.cacheControl] = "no-cache"
        let handles = submitted.map(\.handle)
        @Sendable func abandon(_ reason: StreamWriteWatch.Abandoned) {
            logger.warning("abandoned a completion stream: \(reason); its \(handles.count) sequence(s) were cancelled", metadata: ["id": "\(id)"])
            for handle in handles { handle.cancel() }
            channel.close(promise: nil)
        }
        let body = ResponseBody { writer in
            let (merged, continuation) = AsyncStream<(Int, GenerationEvent)>.makeStream()
            let relay = Task {
                await withTaskGroup(of: Void.self) { group in
                    for (index, (stream, _)) in submitted.enumerated() {
                        group.addTask {
                            for await event in stream {
                                guard watch.queued() else {
                                    if let reason = watch.reason { abandon(reason) }
                                    return
                                }
                                continuation.yield((index, event))
                            }
                        }
                    }
                }
                continuation.finish()
            }
            // Polls the write in progress a few times per stall limit.
            let watchdog = Task {
                let period = min(watch.stallLimit / 4, .seconds(1))
                while !Task.isCancelled {
                    try? await Task.sleep(for: period)
                    if let reason = watch.checkStall() {
                        abandon(reason)
                        return
                    }
                }
            }
            defer {
                relay.cancel()
                watchdog.cancel()
            }
            var usage = CompletionBody.Usage()
            var started = Set<Int>()
            var stopped = Set<Int>()
            var texts = submitted.map { _ in style.text() }
            var counts = submitted.map { _ in 0 }
            func send(_ data: Data) async throws {
                var buffer = ByteBuffer(string: "data: ")
                buffer.writeBytes(data)
                buffer.writeString("\n\n")
                watch.writing()
                try await writer.write(buffer)
                watch.wrote()
            }
            func piece(_ index: Int, _ text: String, _ tokens: [Int]) -> Data {
                if style.kind == .chat {
                    let first = started.insert(index).inserted
                    return ChatAnswer.chunk(id: id, created: created, model: model, index: index, role: first ? "assistant" : nil,
                                            content: text, finishReason: nil)
                }
                return CompletionBody(id: id, created: created, model: model,
                                      choices: [.init(index: index, text: text, token_ids: tokens, logprobs: nil, finish_reason: nil)], usage: nil).json()
            }
            func end(_ index: Int, _ reason: String) -> Data {
                if style.kind == .chat {
                    let first = started.insert(index).inserted
                    return ChatAnswer.chunk(id: id, created: created, model: model, index: index, role: first ? "assistant" : nil,
                                            content: nil, finishReason: reason)
                }
                return CompletionBody(id: id, created: created, model: model,
                                      choices: [.init(index: index, text: "", token_ids: [], logprobs: nil, finish_reason: reason)], usage: nil).json()
            }
            for await (index, event) in merged where !stopped.contains(index) {
                switch event {
                case .token(let token):
                    counts[index] += 1
                    if texts[index] != nil {
                        let delta = texts[index]!.append(token)
                        if !delta.isEmpty || style.kind == .completion { try await send(piece(index, delta, [token])) }
                        if texts[index]!.stopped {
                            submitted[index].handle.cancel()
                            stopped.insert(index)
                            usage.prompt_tokens += promptLengths[index]
                            usage.completion_tokens += counts[index]
                            try await send(end(index, FinishReason.stop.rawValue))
                        }
                    } else {
                        let text = (started.insert(index).inserted ? "" : " ") + String(token)
                        try await send(piece(index, text, [token]))
                    }
                case let .finished(reason, prompt, completion):
                    usage.prompt_tokens += prompt
                    usage.completion_tokens += completion
                    if texts[index] != nil {
                        let rest = texts[index]!.finish()
                        if !rest.isEmpty { try await send(piece(index, rest, [])) }
                    }
                    try await send(end(index, reason.rawValue))
                case .failed(let reason):
                    try await send(CompletionError(reason).body)
                    try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                    try await writer.finish(nil)
                    return
                }
            }
            // Abandoned: the connection is closing; no [DONE] for a stream that was cut short.
            if let reason = watch.reason { throw StreamAbandoned(reason: reason) }
            if includeUsage {
                try await send(style.kind == .chat ? ChatAnswer.usageChunk(id: id, created: created, model: model, usage: usage)
                                                   : CompletionBody(id: id, created: created, model: model, choices: [], usage: usage).json())
            }
            try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: headers, body: body)
    }

    /// Ends an abandoned stream's body (its connection is already closing).
    struct StreamAbandoned: Error, CustomStringConvertible {
        let reason: StreamWriteWatch.Abandoned
        var description: String { "completion stream abandoned: \(reason)" }
    }

    private static func json(status: HTTPResponse.Status, _ data: Data) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
    }

    private static func failure(_ error: CompletionError) -> Response {
        var response = json(status: HTTPResponse.Status(code: error.status), error.body)
        if error.status == 429 { response.headers[.retryAfter] = "1" }
        return response
    }

    struct ModelList: Encodable {
        struct Model: Encodable {
            let id: String
            var object = "model"
            let created: Int
            var owned_by = "eaas"
        }
        var object = "list"
        let data: [Model]
    }
}
