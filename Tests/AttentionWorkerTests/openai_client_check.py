"""The official `openai` Python client against `eaas worker`: completions and chat, streamed and not.

Usage: openai_client_check.py BASE_URL MODEL. Prints one JSON object; exits 1 with the reason on a
mismatch. Greedy decoding, so the streamed text must equal the whole one.
"""
import json
import sys

import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=60)
out = {}

models = client.models.list()
out["models"] = [m.id for m in models.data]

c = client.completions.create(model=model, prompt="The sea is", max_tokens=10, temperature=0)
out["completion_text"] = c.choices[0].text
out["completion_finish"] = c.choices[0].finish_reason
out["completion_usage"] = [c.usage.prompt_tokens, c.usage.completion_tokens]
pieces = [chunk.choices[0].text for chunk in
          client.completions.create(model=model, prompt="The sea is", max_tokens=10, temperature=0, stream=True)
          if chunk.choices]
out["completion_stream_equal"] = "".join(pieces) == c.choices[0].text

messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]
r = client.chat.completions.create(model=model, messages=messages, max_completion_tokens=10, temperature=0)
out["chat_role"] = r.choices[0].message.role
out["chat_content"] = r.choices[0].message.content
out["chat_finish"] = r.choices[0].finish_reason
stream = client.chat.completions.create(model=model, messages=messages, max_completion_tokens=10, temperature=0,
                                        stream=True, stream_options={"include_usage": True})
deltas, roles, usage = [], [], None
for chunk in stream:
    if chunk.usage is not None:
        usage = [chunk.usage.prompt_tokens, chunk.usage.completion_tokens]
    for choice in chunk.choices:
        if choice.delta.role:
            roles.append(choice.delta.role)
        if choice.delta.content:
            deltas.append(choice.delta.content)
out["chat_stream_equal"] = "".join(deltas) == r.choices[0].message.content
out["chat_stream_roles"] = roles
out["chat_stream_usage"] = usage
out["chat_usage"] = [r.usage.prompt_tokens, r.usage.completion_tokens]

try:
    client.chat.completions.create(model=model, messages=[], max_completion_tokens=1)
    out["empty_messages_error"] = None
except openai.BadRequestError as e:
    out["empty_messages_error"] = e.status_code

print(json.dumps(out))
