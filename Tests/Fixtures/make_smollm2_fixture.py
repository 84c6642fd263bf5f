"""Reference continuation of the upcycled SmolLM2 model, made with transformers.

`eaas model import --gguf SmolLM2-135M-Instruct.Q4_1.gguf --upcycle-experts 4 --top-k 2 --out DIR`
writes a Mixtral checkpoint whose experts are copies of SmolLM2's MLP. This script loads DIR with
transformers (MixtralForCausalLM, f32 compute), renders a chat with the checkpoint's own chat
template, generates greedily, and writes the prompt ids, the generated ids and their text to
Tests/Fixtures/smollm2-upcycled.json; the Swift tests generate from the same checkpoint and must
produce the same ids, locally and with the experts on expert pods.

Usage: pip install torch==2.13.0 transformers safetensors
       python3 Tests/Fixtures/make_smollm2_fixture.py DIR
"""
import hashlib
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a concise assistant."}, {"role": "user", "content": "Name three primary colors."}],
]
NEW_TOKENS = 24


def main():
    directory = sys.argv[1]
    tok = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    model.eval()
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    cases = []
    for chat in CHATS:
        ids = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
        if hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                 eos_token_id=config["eos_token_id"], pad_token_id=config["eos_token_id"])
        generated = out[0, len(ids):].tolist()
        cases.append({"messages": chat, "prompt_ids": ids, "generated_ids": generated,
                      "text": tok.decode(generated, skip_special_tokens=True)})
        print(json.dumps(cases[-1]["text"]))
    digest = hashlib.sha256()
    for name in sorted(os.listdir(directory)):
        if name.endswith(".safetensors"):
            with open(os.path.join(directory, name), "rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    digest.update(chunk)
    fixture = {
        "import": {"upcycle_experts": config["num_local_experts"], "top_k": config["num_experts_per_tok"],
                   "dtype": config["torch_dtype"], "source": config.get("eaas_upcycled_from")},
        "weights_sha256": digest.hexdigest(),
        "transformers": __import__("transformers").__version__, "torch": torch.__version__,
        "cases": cases,
    }
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "smollm2-upcycled.json")
    with open(path, "w") as f:
        json.dump(fixture, f, indent=1, ensure_ascii=False)
    print("wrote", path)


if __name__ == "__main__":
    main()
