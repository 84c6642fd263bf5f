// Fuzz target `completion-request`: the attention worker's `POST /v1/completions` body decoder
// (Sources/AttentionWorker/CompletionRequest.swift, with the JSON parser under it).
//
// The input is a request body. Besides crashes it checks: an accepted request is one the engine
// can take (prompts non-empty, max_tokens ≥ 1, sampling parameters without a problem, one
// generation request per prompt), and a refusal is a 400 whose JSON body carries its message.
import AttentionWorker
import Foundation
import JSON

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let body = Data(bytes: data, count: size)
    do {
        let request = try CompletionRequest(json: body, seed: 42)
        require(!request.prompts.isEmpty && request.prompts.allSatisfy { !$0.isEmpty }, "accepted a request without a prompt")
        require(request.maxTokens >= 1, "accepted max_tokens \(request.maxTokens)")
        require(request.sampling.problem == nil, "accepted sampling parameters with a problem: \(request.sampling.problem!)")
        let generations = request.generationRequests
        require(generations.count == request.prompts.count && zip(generations, request.prompts).allSatisfy { $0.prompt == $1 },
                     "generation requests do not match the prompts")
    } catch {
        require(error.status == 400 && error.type == "invalid_request_error", "refused with \(error.status) \(error.type)")
        guard let reply = try? JSONValue.parse(error.body), reply[path: ["error", "message"]]?.string == error.message else {
            fatalError("the error body does not carry the message: \(String(decoding: error.body, as: UTF8.self))")
        }
    }
    return 0
}
