"""A tiny random-weight llama GGUF that llama.cpp loads, for fast engine tests.

The file is a real `llama` architecture model (a few hundred KB) with a GPT-2 style byte-level BPE
vocabulary: the 256 byte symbols, a handful of merges, and ChatML's special tokens, so any text
tokenizes and the ChatML chat template renders into tokens llama.cpp understands. Weights are
seeded random numbers: outputs are gibberish, but deterministic for a given seed, which is all the
timing, resume and crash-isolation tests need.

Norm weights stay F32 (F16 norms make llama.cpp abort); the matrices are F32 too, the file is small.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_MERGES = ("Ġ t", "Ġ a", "h e", "i n", "r e", "o n", "Ġt he", "e r")

# llama.cpp token types (gguf.TokenType): NORMAL = 1, CONTROL = 3.
_NORMAL, _CONTROL = 1, 3


def _byte_symbols() -> list[str]:
    """GPT-2's bytes_to_unicode: every byte as one printable character, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {}
    extra = 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return [mapping[b] for b in range(256)]


def vocabulary() -> tuple[list[str], list[int], list[str]]:
    """Tokens, their types, and the BPE merges of the tiny model."""
    tokens = _byte_symbols()
    for merge in _MERGES:
        left, right = merge.split(" ")
        tokens.append(left + right)
    types = [_NORMAL] * len(tokens)
    for special in SPECIAL_TOKENS:
        tokens.append(special)
        types.append(_CONTROL)
    return tokens, types, list(_MERGES)


def write_tiny_gguf(
    path: str | Path,
    *,
    chat_template: str | None = CHATML_TEMPLATE,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    context_length: int = 4096,
    seed: int = 0,
) -> Path:
    """Write the tiny model to `path` and return it. `chat_template=None` leaves the key out."""
    import gguf

    path = Path(path)
    tokens, types, merges = vocabulary()
    n_vocab = len(tokens)
    head_dim = n_embd // n_head
    rng = np.random.default_rng(seed)

    def matrix(rows: int, cols: int) -> np.ndarray:
        # numpy shape (rows, cols) is ggml ne = [cols, rows]: rows = output features.
        return (rng.standard_normal((rows, cols)) * 0.2).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-random-llama")
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_add_bos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    n_kv = head_dim * n_head_kv
    writer.add_tensor("token_embd.weight", matrix(n_vocab, n_embd))
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", matrix(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.attn_k.weight", matrix(n_kv, n_embd))
        writer.add_tensor(f"blk.{i}.attn_v.weight", matrix(n_kv, n_embd))
        writer.add_tensor(f"blk.{i}.attn_output.weight", matrix(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", matrix(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", matrix(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", matrix(n_embd, n_ff))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor("output.weight", matrix(n_vocab, n_embd))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_corrupt_gguf(path: str | Path, size_bytes: int = 4096) -> Path:
    """A file that starts like a GGUF but is garbage after the magic: llama.cpp must refuse it."""
    path = Path(path)
    rng = np.random.default_rng(1)
    path.write_bytes(b"GGUF" + rng.integers(0, 256, size_bytes, dtype=np.uint8).tobytes())
    return path


if __name__ == "__main__":  # pragma: no cover - handy for poking at the file by hand
    import sys

    print(write_tiny_gguf(sys.argv[1] if len(sys.argv) > 1 else "tiny.gguf"))
