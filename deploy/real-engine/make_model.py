"""Write a tiny random-weight Llama model as GGUF, for llama.cpp's llama-server in tests.

    python deploy/real-engine/make_model.py OUT.gguf

Deterministic and made in seconds, never downloaded: 2 layers, hidden size 64, weights
from a seeded generator, and a byte-level BPE of 1,024 tokens trained by `tokenizers`
on a few files of Python's standard library. Its text is gibberish; its protocol,
tokenization, batching, slots, errors and timing are llama.cpp's own.

Two things make its gibberish usable in tests. A logit bias, carried by one residual
dimension that every token's embedding holds constant and no layer writes to: the
end-of-turn token is likely enough that an answer ends by itself after some tens of
tokens, a `"` is likely enough that a JSON string in a grammar-constrained tool call
or `json_schema` answer closes soon, and the other control tokens are never said. And
the chat template of Qwen 2.5 (ChatML with `<tool_call>` JSON), which llama.cpp reads
to know how tools are offered and how a tool call is parsed.

Needs the `real-engine` extra: `pip install -e ".[real-engine]"` (gguf, tokenizers, numpy).
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
from pathlib import Path

import gguf
import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SEED = 20240521
VOCAB_SIZE = 1024
HIDDEN = 64
LAYERS = 2
HEADS = 4
FFN = 128
CONTEXT = 4096
# The standard library files the tokenizer learns from: fixed names, present in every
# CPython 3.9+; their text differs a little between Python versions, which changes the
# vocabulary but not what the tests rely on.
CORPUS = ("argparse.py", "textwrap.py", "json/__init__.py", "json/decoder.py", "string.py")
END_OF_TURN = "<|im_end|>"
CONTROL = ("<|endoftext|>", "<|im_start|>", END_OF_TURN)
ADDED = ("<tool_call>", "</tool_call>")
# Logit biases (natural-log odds over a near-uniform spread of ~1,000 tokens).
EOT_BIAS = 2.9  # an answer ends by itself after some tens of tokens
QUOTE_BIAS = 2.5  # a JSON string closes after a few tokens
# llama.cpp lets a required tool call come after some text (its grammar is "any text up to
# <tool_call>, then calls"): a likely <tool_call> token makes the call come soon, and lets
# an answer with tools on offer call one of its own accord.
TOOL_CALL_BIAS = 3.5
# A call opens with "<tool_call>" and a newline (llama.cpp's grammar and its lazy trigger
# want both; the pair cannot be one token, or llama.cpp refuses the trigger): a likely
# newline makes the pair come soon enough.
NEWLINE = "\u010a"  # "\n" in the byte-level spelling
NEWLINE_BIAS = 3.0
NEVER = -30.0  # the other control tokens and tags (a grammar spells them when it must)
# and every token that is not printable ASCII: the text stays valid UTF-8 token by token
BIAS_DIM_VALUE = 6.0
# Qwen 2.5's chat template (Apache-2.0), with its default system prompt shortened.
CHAT_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level spelling: each byte as one printable character (the inverse map)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(char): byte for byte, char in zip(printable, chars, strict=True)}


def _is_plain_text(token: str, alphabet: dict[str, int]) -> bool:
    data = bytes(alphabet[char] for char in token)
    return all(32 <= byte < 127 or byte in (9, 10) for byte in data)


def train_tokenizer() -> tuple[list[str], list[str]]:
    """A byte-level BPE: its tokens (byte-level spelling, by id) and its merges."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [(stdlib / name).read_text(encoding="utf-8") for name in CORPUS]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(CONTROL) - len(ADDED),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    spec = json.loads(tokenizer.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return tokens, merges


def weights(rng: np.random.Generator, vocab: int, bias: np.ndarray) -> dict[str, np.ndarray]:
    """The tensors, numpy-shaped (rows are outputs), all float32."""
    head_dim = HIDDEN // HEADS

    def normal(*shape: int, std: float) -> np.ndarray:
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    embeddings = normal(vocab, HIDDEN, std=1.0)
    # Dimension 0 is the same for every token and no layer writes to it (row 0 of the
    # attention and MLP output projections is zero), so after the final RMS norm it is
    # a near-constant, and the output matrix's column 0 is then a per-token logit bias.
    embeddings[:, 0] = BIAS_DIM_VALUE
    tensors: dict[str, np.ndarray] = {"token_embd.weight": embeddings}
    for layer in range(LAYERS):
        prefix = f"blk.{layer}."
        attn_out = normal(HIDDEN, HIDDEN, std=0.02)
        attn_out[0, :] = 0.0
        ffn_down = normal(HIDDEN, FFN, std=0.02)
        ffn_down[0, :] = 0.0
        tensors |= {
            prefix + "attn_norm.weight": np.ones(HIDDEN, dtype=np.float32),
            prefix + "attn_q.weight": normal(HIDDEN, HIDDEN, std=0.2),
            prefix + "attn_k.weight": normal(HEADS * head_dim, HIDDEN, std=0.2),
            prefix + "attn_v.weight": normal(HEADS * head_dim, HIDDEN, std=0.2),
            prefix + "attn_output.weight": attn_out,
            prefix + "ffn_norm.weight": np.ones(HIDDEN, dtype=np.float32),
            prefix + "ffn_gate.weight": normal(FFN, HIDDEN, std=0.2),
            prefix + "ffn_up.weight": normal(FFN, HIDDEN, std=0.2),
            prefix + "ffn_down.weight": ffn_down,
        }
    tensors["output_norm.weight"] = np.ones(HIDDEN, dtype=np.float32)
    output = normal(vocab, HIDDEN, std=0.2)
    # RMS of a residual vector: dimension 0 at BIAS_DIM_VALUE, the other 63 at ~1 each.
    rms = float(np.sqrt((BIAS_DIM_VALUE**2 + (HIDDEN - 1)) / HIDDEN))
    output[:, 0] = bias / (BIAS_DIM_VALUE / rms)
    tensors["output.weight"] = output
    return tensors


def write(path: Path) -> None:
    """Write the model to ``path``."""
    tokens, merges = train_tokenizer()
    regular = len(tokens)
    tokens += [*CONTROL, *ADDED]
    types = [gguf.TokenType.NORMAL] * regular
    types += [gguf.TokenType.CONTROL] * len(CONTROL) + [gguf.TokenType.USER_DEFINED] * len(ADDED)
    ids = {token: i for i, token in enumerate(tokens)}
    bias = np.zeros(len(tokens), dtype=np.float32)
    alphabet = _byte_level_alphabet()
    for i, token in enumerate(tokens[:regular]):
        if not _is_plain_text(token, alphabet):
            bias[i] = NEVER
    for token in (*CONTROL, *ADDED):
        bias[ids[token]] = NEVER
    bias[ids[END_OF_TURN]] = EOT_BIAS
    bias[ids["<tool_call>"]] = TOOL_CALL_BIAS
    bias[ids[NEWLINE]] = NEWLINE_BIAS
    bias[ids['"']] = QUOTE_BIAS
    tensors = weights(np.random.default_rng(SEED), len(tokens), bias)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-random-llama")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(ids["<|endoftext|>"])
    writer.add_eos_token_id(ids[END_OF_TURN])
    writer.add_eot_token_id(ids[END_OF_TURN])
    writer.add_pad_token_id(ids["<|endoftext|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, tensor in tensors.items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the .gguf file to write")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    write(tmp)
    tmp.replace(args.out)
    print(f"real-engine: wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
