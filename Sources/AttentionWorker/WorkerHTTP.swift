import Foundation
import Hummingbird
import Logging
import NIOCore

/// The worker's HTTP API: `POST /v1/completions` (OpenAI's shape, prompts as token ids, `stream`
/// as server-sent events), `GET /v1/models`, `/healthz`, `/readyz`.
///
/// Overload: requests beyond the engine's running sequences queue (up to its `maxWaiting`); past
/// that the answer is 429 with `Retry-After`, and nothing of the request is kept.
public enum WorkerHTTP {
    /// Largest request body read.
    public static let maxBodyBytes = 16 << 20

    public static func router(engine: GenerationEngine, limits: WorkerServer.Limits = .init(),
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
        for (path, allowed) in [("v1/completions", "POST"), ("v1/models", "GET")] {
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
            do throws(CompletionError) { completion = try CompletionRequest(json: Data(buffer: body), seed: UInt64.random(in: 0...UInt64.max)) } catch {
                return failure(error)
            }
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
            let id = "cmpl-" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
            let created = Int(Date().timeIntervalSince1970)
            if completion.stream {
                let watch = StreamWriteWatch(stallLimit: limits.streamStallTimeout, maxUnsent: limits.maxUnsentEvents)
                return streaming(submitted, id: id, created: created, model: engine.modelName, includeUsage: completion.includeUsage,
                                 watch: watch, channel: context.channel, logger: logger)
            }
            return await whole(submitted.map(\.events), id: id, created: created, model: engine.modelName)
        }
        return router
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
    private static func whole(_ streams: [AsyncStream<GenerationEvent>], id: String, created: Int, model: String) async -> Response {
        var choices: [CompletionBody.Choice] = []
        var usage = CompletionBody.Usage()
        for (index, stream) in streams.enumerated() {
            var tokens: [Int] = []
            var reason: String?
            for await event in stream {
                switch event {
                case .token(let token): tokens.append(token)
                case let .finished(finish, prompt, completion):
                    reason = finish.rawValue
                    usage.prompt_tokens += prompt
                    usage.completion_tokens += completion
                case .failed(let reason):
                    return failure(CompletionError(reason))
                }
            }
            guard let reason else { return failure(CompletionError(status: 503, type: "server_error", message: "generation ended early", param: nil)) }
            choices.append(.init(index: index, text: CompletionBody.text(tokens), token_ids: tokens, logprobs: nil, finish_reason: reason))
        }
        return json(status: .ok, CompletionBody(id: id, created: created, model: model, choices: choices, usage: usage).json())
    }

    /// Server-sent events: one chunk per token (per prompt, as tokens come), a chunk with the
    /// finish reason, the usage chunk when asked, then `data: [DONE]`.
    ///
    /// A client that stops reading does not keep its sequences generating: `watch` abandons the
    /// stream (sequences cancelled, connection closed) once a write has waited its stall limit or
    /// too many events wait unsent.
    private static func streaming(_ submitted: [(events: AsyncStream<GenerationEvent>, handle: GenerationEngine.Handle)],
                                  id: String, created: Int, model: String, includeUsage: Bool,
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
            func send(_ data: Data) async throws {
                var buffer = ByteBuffer(string: "data: ")
                buffer.writeBytes(data)
                buffer.writeString("\n\n")
                watch.writing()
                try await writer.write(buffer)
                watch.wrote()
            }
            for await (index, event) in merged {
                let chunk: CompletionBody
                switch event {
                case .token(let token):
                    let text = (started.insert(index).inserted ? "" : " ") + String(token)
                    chunk = CompletionBody(id: id, created: created, model: model,
                                           choices: [.init(index: index, text: text, token_ids: [token], logprobs: nil, finish_reason: nil)], usage: nil)
                case let .finished(reason, prompt, completion):
                    usage.prompt_tokens += prompt
                    usage.completion_tokens += completion
                    chunk = CompletionBody(id: id, created: created, model: model,
                                           choices: [.init(index: index, text: "", token_ids: [], logprobs: nil, finish_reason: reason.rawValue)], usage: nil)
                case .failed(let reason):
                    try await send(CompletionError(reason).body)
                    try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                    try await writer.finish(nil)
                    return
                }
                try await send(chunk.json())
            }
            // Abandoned: the connection is closing; no [DONE] for a stream that was cut short.
            if let reason = watch.reason { throw StreamAbandoned(reason: reason) }
            if includeUsage {
                try await send(CompletionBody(id: id, created: created, model: model, choices: [], usage: usage).json())
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
