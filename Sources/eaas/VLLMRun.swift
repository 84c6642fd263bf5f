import Foundation
import Platform
import MoE

/// vLLM on the same checkpoint and prompts, for `eaas bench e2e --vllm PYTHON`: decode tokens/s
/// per batch size, measured as (batch × decode tokens) / (time of a full generation − time of a
/// prefill-only generation), both greedy with end-of-sequence ignored; then prefill of long prompts
/// (one token each, timed to the last first token), weights in the dtype asked
/// for (vLLM's names: bfloat16, float16, float32).
enum VLLMRun {
    static let script = #"""
import json, os, sys, time

def main():
    with open(sys.argv[1]) as f:
        request = json.load(f)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    # Every core this process may use, as ours get: vLLM's CPU backend otherwise keeps one back.
    cpus = sorted(os.sched_getaffinity(0))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(str(c) for c in cpus))
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    sizes = request["sizes"]
    long = request["prefill"]
    llm = LLM(model=request["model"], dtype=request["dtype"], skip_tokenizer_init=True, max_num_seqs=max(sizes + long["sizes"]),
              max_model_len=max(request["prompt_tokens"] + request["decode_tokens"], long["prompt_tokens"] + 1) + 8,
              max_num_batched_tokens=max(long["batch_tokens"], request["prompt_tokens"] * max(sizes)),
              # Every run computes its prompts, as ours does: a repeated prompt would otherwise come from the prefix cache.
              enable_prefix_caching=False, seed=0)

    def run(prompts, tokens):
        params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True, detokenize=False)
        start = time.perf_counter()
        outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        assert all(len(o.outputs[0].token_ids) == tokens for o in outputs)
        return time.perf_counter() - start

    results = []
    run(request["prompts"][str(max(sizes))], 2)
    for batch in sizes:
        prompts = request["prompts"][str(batch)]
        prefill = min(run(prompts, 1) for _ in range(2))
        total = run(prompts, request["decode_tokens"] + 1)
        results.append({"batch": batch, "vllm_tok_s": batch * request["decode_tokens"] / max(total - prefill, 1e-9),
                        "vllm_prefill_seconds": prefill, "vllm_total_seconds": total})
    # Long prompts, one token each: submission to the last first token (median of three, after a warm-up).
    prefills = []
    if long["sizes"]:
        run(long["prompts"][str(max(long["sizes"]))], 1)
    for batch in long["sizes"]:
        prompts = long["prompts"][str(batch)]
        seconds = sorted(run(prompts, 1) for _ in range(3))[1]
        prefills.append({"batch": batch, "vllm_prefill_tok_s": batch * long["prompt_tokens"] / seconds, "vllm_prefill_seconds": seconds})
    print("EAAS-RESULT " + json.dumps({"decode": results, "prefill": prefills}), flush=True)

if __name__ == "__main__":
    main()
"""#

    /// Decode rows per batch size (`vllm_tok_s`) and prefill rows per prefill batch size
    /// (`vllm_prefill_tok_s`, `vllm_prefill_seconds`), on the prompts our runs use (same seeds).
    static func measure(python: String, model: String, sizes: [Int], promptTokens: Int, decodeTokens: Int,
                        prefill: (sizes: [Int], promptTokens: Int, batchTokens: Int), dtype: String) throws -> (decode: [[String: Any]], prefill: [[String: Any]]) {
        let vocab = try ModelConfig.load(directory: model).vocabSize
        var prompts: [String: [[Int]]] = [:], longPrompts: [String: [[Int]]] = [:]
        for batch in Set(sizes) {
            prompts["\(batch)"] = DecodeRun.prompts(batch: batch, promptTokens: promptTokens, vocab: vocab, seed: UInt64(batch))
        }
        for batch in Set(prefill.sizes) {
            longPrompts["\(batch)"] = DecodeRun.prompts(batch: batch, promptTokens: prefill.promptTokens, vocab: vocab, seed: UInt64(batch))
        }
        let request: [String: Any] = ["model": model, "dtype": dtype, "sizes": sizes, "prompt_tokens": promptTokens, "decode_tokens": decodeTokens, "prompts": prompts,
                                      "prefill": ["sizes": prefill.sizes, "prompt_tokens": prefill.promptTokens, "batch_tokens": prefill.batchTokens, "prompts": longPrompts]]
        let scriptPath = NSTemporaryDirectory() + "eaas-bench-vllm-\(getpid()).py", requestPath = NSTemporaryDirectory() + "eaas-bench-vllm-\(getpid()).json"
        try script.write(toFile: scriptPath, atomically: true, encoding: .utf8)
        try JSONSerialization.data(withJSONObject: request).write(to: URL(fileURLWithPath: requestPath))
        defer {
            try? FileManager.default.removeItem(atPath: scriptPath)
            try? FileManager.default.removeItem(atPath: requestPath)
        }
        let output = Pipe(), errors = Pipe()
        // Dies with this process: an interrupted benchmark leaves no vLLM behind.
        let process = try ChildProcess(executable: python, arguments: [scriptPath, requestPath], standardOutput: .pipe(output), standardError: .pipe(errors))
        // Drain stderr as it comes so that vLLM's logging cannot fill the pipe.
        let errorText = ErrorText()
        let reader = Thread { errorText.append(errors.fileHandleForReading.readDataToEndOfFile()) }
        reader.start()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let status = process.waitUntilExit()
        guard let line = text.split(separator: "\n").last(where: { $0.hasPrefix("EAAS-RESULT ") }),
              let result = try JSONSerialization.jsonObject(with: Data(line.dropFirst(12).utf8)) as? [String: Any],
              let decode = result["decode"] as? [[String: Any]], let prefillRows = result["prefill"] as? [[String: Any]] else {
            throw CommandFailure("vLLM run failed (exit \(status)): \(errorText.tail)")
        }
        return (decode, prefillRows)
    }

    final class ErrorText: @unchecked Sendable {
        private let lock = NSLock()
        private var data = Data()
        func append(_ more: Data) { lock.lock(); data.append(more); lock.unlock() }
        var tail: String { lock.lock(); defer { lock.unlock() }; return String(decoding: data.suffix(2000), as: UTF8.self) }
    }
}

