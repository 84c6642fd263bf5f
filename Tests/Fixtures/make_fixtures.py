#!/usr/bin/env python3
"""Reference fixtures for the MoE module, made by Hugging Face transformers.

For each supported architecture this builds a tiny seeded random model, saves it as a real
checkpoint (config.json + safetensors, as `save_pretrained` writes it) and records, for fixed
inputs fed straight into every MoE block, what transformers computes:

    layers.{L}.input          [tokens, hidden]   f32  the block's input
    layers.{L}.router_logits  [tokens, experts]  f32  gate logits
    layers.{L}.topk_ids       [tokens, topK]     i32  chosen experts, ascending per token
    layers.{L}.topk_weights   [tokens, topK]     f32  their weights, in the same order
    layers.{L}.output         [tokens, hidden]   f32  the whole block's output (shared experts included)

into `expected.safetensors` beside the checkpoint, and for the architectures the attention worker
runs, the whole model on a prompt and its greedy continuation:

    prompt_ids        [P]              i32  the prompt (chosen so no decision below is a near tie)
    generated_ids     [16]             i32  greedy continuation, no stop token
    logits            [P + 15, vocab]  f32  logits at every position of prompt + generated[:-1]

into `generation.safetensors`. Run it from anywhere (CPU torch is enough):

    pip install torch==2.13.0 transformers safetensors
    python3 Tests/Fixtures/make_fixtures.py

It is only for making fixtures; nothing at run time needs Python.

    python3 Tests/Fixtures/make_fixtures.py --check-init DIR [DIR ...]

instead loads checkpoints written by `eaas model init` with transformers and fails unless every
weight is found and none is left over, and a forward pass gives finite logits.
"""
import json
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import (
    DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM,
    MixtralConfig, MixtralForCausalLM, OlmoeConfig, OlmoeForCausalLM,
    Qwen2MoeConfig, Qwen2MoeForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM,
)

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENS = 7
COMMON = dict(vocab_size=64, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=128, initializer_range=0.1, tie_word_embeddings=False,
              pad_token_id=0, bos_token_id=1, eos_token_id=2)

# name -> (config class, model class, config kwargs, how to save)
CASES = {
    # softmax, top-k, always renormalised
    "mixtral": (MixtralConfig, MixtralForCausalLM, dict(
        intermediate_size=48, num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2), {}),
    # softmax without renormalisation, sigmoid-gated shared expert, a dense layer from mlp_only_layers
    "qwen2-moe": (Qwen2MoeConfig, Qwen2MoeForCausalLM, dict(
        intermediate_size=64, moe_intermediate_size=24, shared_expert_intermediate_size=40,
        num_hidden_layers=3, num_experts=8, num_experts_per_tok=2, norm_topk_prob=False,
        decoder_sparse_step=1, mlp_only_layers=[0]), {}),
    # softmax with renormalisation, decoder_sparse_step 2 (layers 1 and 3 are MoE)
    "qwen3-moe": (Qwen3MoeConfig, Qwen3MoeForCausalLM, dict(
        intermediate_size=64, moe_intermediate_size=24, num_hidden_layers=4, num_experts=8,
        num_experts_per_tok=3, norm_topk_prob=True, decoder_sparse_step=2, head_dim=8), {}),
    # the same model stored with fused 3-D expert tensors (gate_up_proj [E, 2F, H], down_proj [E, H, F])
    "qwen3-moe-fused": (Qwen3MoeConfig, Qwen3MoeForCausalLM, dict(
        intermediate_size=64, moe_intermediate_size=24, num_hidden_layers=2, num_experts=8,
        num_experts_per_tok=2, norm_topk_prob=True, head_dim=8), {"fused": True}),
    # bf16 weights on disk; the reference runs in f32 on the exactly widened weights
    "qwen3-moe-bf16": (Qwen3MoeConfig, Qwen3MoeForCausalLM, dict(
        intermediate_size=64, moe_intermediate_size=24, num_hidden_layers=2, num_experts=8,
        num_experts_per_tok=2, norm_topk_prob=True, head_dim=8), {"dtype": torch.bfloat16}),
    # softmax without renormalisation
    "olmoe": (OlmoeConfig, OlmoeForCausalLM, dict(
        intermediate_size=40, num_hidden_layers=2, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=False), {}),
    # group-limited greedy on softmax scores, routed scaling, 2 shared experts, first layer dense
    "deepseek-v2": (DeepseekV2Config, DeepseekV2ForCausalLM, dict(
        intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=3, n_routed_experts=8,
        n_shared_experts=2, num_experts_per_tok=3, topk_method="group_limited_greedy", n_group=4,
        topk_group=2, routed_scaling_factor=2.0, first_k_dense_replace=1, q_lora_rank=16,
        kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, head_dim=4,
        num_key_value_heads=4), {}),
    # sigmoid scores with correction bias, top-2-sum group choice, renormalised, scaled; sharded on disk
    "deepseek-v3": (DeepseekV3Config, DeepseekV3ForCausalLM, dict(
        intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=3, n_routed_experts=8,
        n_shared_experts=1, num_experts_per_tok=2, n_group=4, topk_group=2, norm_topk_prob=True,
        routed_scaling_factor=2.5, first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=16,
        qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, head_dim=4, num_key_value_heads=4),
        {"max_shard_size": "40KB"}),
    # DeepSeek-V3 as released: YaRN rotary scaling (factor, mscale, mscale_all_dim, beta_fast/slow,
    # original_max_position_embeddings) and FP8 (F8_E4M3) projections with a weight_scale_inv per
    # 16x16 block; the reference runs in f32 on the dequantized weights
    "deepseek-v3-yarn-fp8": (DeepseekV3Config, DeepseekV3ForCausalLM, dict(
        intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=3, n_routed_experts=8,
        n_shared_experts=1, num_experts_per_tok=2, n_group=4, topk_group=2, norm_topk_prob=True,
        routed_scaling_factor=2.5, first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=16,
        qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, head_dim=4, num_key_value_heads=4,
        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "beta_fast": 32,
                      "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 1.0}),
        {"fp8_block": [16, 16]}),
}

FP8_MAX = 448.0


def quantize_fp8(model, block):
    """Every 2-D projection (attention, dense and expert MLPs) rounded to F8_E4M3 per block with an
    f32 scale, DeepSeek-V3's format: weight = fp8 * weight_scale_inv. Returns the fp8 tensors and
    their scales, and puts the dequantized f32 weights into the model."""
    quantized = {}
    state = model.state_dict()
    for name, w in state.items():
        if not (name.endswith("proj.weight") or name.endswith("proj_with_mqa.weight")) or w.dim() != 2:
            continue
        rows, cols = w.shape
        br, bc = block
        sr, sc = -(-rows // br), -(-cols // bc)
        scale = torch.zeros(sr, sc)
        q = torch.zeros(rows, cols, dtype=torch.float8_e4m3fn)
        for i in range(sr):
            for j in range(sc):
                tile = w[i * br:(i + 1) * br, j * bc:(j + 1) * bc].float()
                s = max(tile.abs().max().item() / FP8_MAX, 1e-12)
                scale[i, j] = s
                q[i * br:(i + 1) * br, j * bc:(j + 1) * bc] = (tile / s).to(torch.float8_e4m3fn)
        expanded = scale.repeat_interleave(br, 0)[:rows].repeat_interleave(bc, 1)[:, :cols]
        state[name] = q.float() * expanded
        quantized[name] = (q.contiguous(), scale.contiguous())
    model.load_state_dict(state)
    return quantized


def moe_blocks(model):
    for i, layer in enumerate(model.model.layers):
        mlp = layer.mlp
        if hasattr(mlp, "gate") and hasattr(mlp, "experts"):
            yield i, mlp


def top_margin(values, k):
    """Smallest gap, over tokens, between the k-th and (k+1)-th largest value."""
    top = values.sort(dim=-1, descending=True).values
    return (top[:, k - 1] - top[:, k]).min().item()


def choice_margin(gate, logits, model_type, k):
    """The margin of the values the gate actually ranks: groups first (DeepSeek), then experts."""
    if model_type == "deepseek_v3":
        values = logits.sigmoid() + gate.e_score_correction_bias
        groups = values.view(values.shape[0], gate.num_group, -1).topk(2, dim=-1).values.sum(-1)
    else:
        values = logits.softmax(-1)
        groups = None
        if getattr(gate, "topk_method", None) == "group_limited_greedy":
            groups = values.view(values.shape[0], gate.num_group, -1).max(dim=-1).values
    margin = float("inf")
    if groups is not None and gate.topk_group < gate.num_group:
        margin = top_margin(groups, gate.topk_group)
        chosen = groups.topk(gate.topk_group, dim=-1).indices
        mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, chosen, True)
        values = values.masked_fill(~mask.repeat_interleave(values.shape[1] // gate.num_group, dim=1), float("-inf"))
    return min(margin, top_margin(values, k))


def record(name, model, dtype):
    tensors = {}
    g = torch.Generator().manual_seed(1234)
    for i, block in moe_blocks(model):
        x = torch.randn(TOKENS, model.config.hidden_size, generator=g)
        with torch.no_grad():
            logits, weights, ids = block.gate(x)
            out = block(x.unsqueeze(0)).squeeze(0)
        # Refuse inputs whose choice hangs on a near tie: rounding would decide it, not the model.
        margin = choice_margin(block.gate, logits.float(), model.config.model_type, ids.shape[-1])
        assert margin > 1e-4, f"{name} layer {i}: near tie in routing (margin {margin})"
        order = ids.argsort(dim=-1)
        tensors[f"layers.{i}.input"] = x.contiguous()
        tensors[f"layers.{i}.router_logits"] = logits.float().contiguous()
        tensors[f"layers.{i}.topk_ids"] = ids.gather(1, order).to(torch.int32).contiguous()
        tensors[f"layers.{i}.topk_weights"] = weights.float().gather(1, order).contiguous()
        tensors[f"layers.{i}.output"] = out.float().contiguous()
    assert tensors, f"{name}: no MoE layer"
    return tensors


GENERATED = 16
# Architectures whose whole model the attention worker runs (fixture name -> prompt seed base).
WHOLE_MODEL = ("mixtral", "qwen2-moe", "qwen3-moe", "qwen3-moe-bf16", "olmoe", "deepseek-v2", "deepseek-v3", "deepseek-v3-yarn-fp8")


def greedy_with_margins(model, prompt):
    """Greedy continuation of `prompt` by full forwards (no cache), the smallest top-1/top-2 logit
    gap over the steps, and the smallest routing margin over every MoE layer and position."""
    margins = []
    hooks = []
    k = model.config.num_experts_per_tok
    for _, block in moe_blocks(model):
        def hook(module, args, output, block=block):
            logits = output[0] if isinstance(output, tuple) else output
            margins.append(choice_margin(block.gate, logits.detach().float().reshape(-1, logits.shape[-1]), model.config.model_type, k))
        hooks.append(block.gate.register_forward_hook(hook))
    ids = list(prompt)
    gap = float("inf")
    with torch.no_grad():
        for _ in range(GENERATED):
            logits = model(torch.tensor([ids])).logits[0, -1].float()
            top = logits.topk(2).values
            gap = min(gap, (top[0] - top[1]).item())
            ids.append(int(logits.argmax()))
        logits = model(torch.tensor([ids[:-1]])).logits[0].float()
    for h in hooks:
        h.remove()
    return ids[len(prompt):], logits, gap, min(margins)


def record_generation(name, model):
    """Whole-model logits and a greedy continuation for the first seeded prompt whose decisions
    (next token, expert choice) all clear their margins, so that rounding cannot flip them."""
    vocab = model.config.vocab_size
    for attempt in range(50):
        g = torch.Generator().manual_seed(4321 + attempt)
        length = 5 + attempt % 4
        prompt = torch.randint(3, vocab, (length,), generator=g).tolist()
        generated, logits, gap, route = greedy_with_margins(model, prompt)
        if gap > 1e-3 and route > 1e-4:
            print(f"{name}: prompt {prompt} (attempt {attempt}), token gap {gap:.2e}, routing margin {route:.2e}")
            return {
                "prompt_ids": torch.tensor(prompt, dtype=torch.int32),
                "generated_ids": torch.tensor(generated, dtype=torch.int32),
                "logits": logits.contiguous(),
            }
    raise SystemExit(f"{name}: no prompt without near ties in 50 attempts")


def check_init(directories):
    from transformers import AutoModelForCausalLM
    for directory in directories:
        model, info = AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True, dtype=torch.float32)
        problems = {k: v for k, v in info.items() if v}
        assert not problems, f"{directory}: {problems}"
        with torch.no_grad():
            logits = model(torch.tensor([[1, 2, 3, 4]])).logits
        assert torch.isfinite(logits).all(), f"{directory}: non-finite logits"
        print(f"{directory}: {type(model).__name__} loads with no missing or unexpected weights")


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--check-init":
        check_init(sys.argv[2:])
        return
    only = set(sys.argv[2:]) if len(sys.argv) > 2 and sys.argv[1] == "--only" else None
    for name, (config_class, model_class, kwargs, how) in CASES.items():
        if only is not None and name not in only:
            continue
        torch.manual_seed(sum(map(ord, name)))
        config = config_class(**{**COMMON, **kwargs})
        config._attn_implementation = "eager"
        model = model_class(config).eval()
        if model.config.model_type == "deepseek_v3":
            # Make the correction bias matter: it is zero after init.
            for _, block in moe_blocks(model):
                block.gate.e_score_correction_bias.copy_(torch.randn(block.gate.e_score_correction_bias.shape) * 0.05)
        out_dir = os.path.join(HERE, name)
        shutil.rmtree(out_dir, ignore_errors=True)
        dtype = how.get("dtype", torch.float32)
        if dtype != torch.float32:
            # Round the weights to the stored dtype first, then compute in f32 on the rounded values.
            model = model.to(dtype)
            model.save_pretrained(out_dir)
            # A fresh f32 model given the rounded weights: `.to(dtype)` also rounded the rotary
            # inverse frequencies (a non-persistent buffer), which a loader recomputes in f32.
            rounded = model.float().state_dict()
            model = model_class(config).eval()
            model.load_state_dict(rounded)
        elif how.get("fp8_block"):
            quantized = quantize_fp8(model, how["fp8_block"])
            model.save_pretrained(out_dir)
            path = os.path.join(out_dir, "model.safetensors")
            state = {k: v.contiguous() for k, v in load_file(path).items()}
            for weight, (q, scale) in quantized.items():
                state[weight] = q
                state[weight + "_scale_inv"] = scale
            save_file(state, path, metadata={"format": "pt"})
            config_path = os.path.join(out_dir, "config.json")
            with open(config_path) as f:
                saved = json.load(f)
            saved["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                            "weight_block_size": how["fp8_block"]}
            with open(config_path, "w") as f:
                json.dump(saved, f, indent=2)
        elif how.get("fused"):
            model.save_pretrained(out_dir)
            os.remove(os.path.join(out_dir, "model.safetensors"))
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            assert any(k.endswith("experts.gate_up_proj") for k in state), "expected fused experts in memory"
            save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
        else:
            model.save_pretrained(out_dir, max_shard_size=how.get("max_shard_size", "50GB"))
        for extra in ("generation_config.json",):
            path = os.path.join(out_dir, extra)
            if os.path.exists(path):
                os.remove(path)
        expected = record(name, model, dtype)
        save_file(expected, os.path.join(out_dir, "expected.safetensors"),
                  metadata={"transformers": transformers.__version__, "torch": torch.__version__})
        print(f"{name}: {len(expected) // 5} MoE layers -> {out_dir}")
        if name in WHOLE_MODEL:
            save_file(record_generation(name, model), os.path.join(out_dir, "generation.safetensors"),
                      metadata={"transformers": transformers.__version__, "torch": torch.__version__})


if __name__ == "__main__":
    main()
