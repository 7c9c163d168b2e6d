"""Random-weight "twins": GGUF files with the exact architecture of a manifest model.

No real weights reach some GPU hosts, yet decode speed depends only on the shapes and the quant
types, not on the values. A twin has every tensor a real file of that architecture has, at the
manifest's sizes (layers, widths, heads, KV heads, FFN size, vocabulary, tied or separate output,
biases, per-architecture tensors of llama, qwen2, gemma3 and phi3), filled with random numbers, and
is quantized by llama.cpp's own quantizer, so the tensor types (Q4_K_M's Q6_K tensors included)
are what llama.cpp gives the real file.

How a twin is made:
1. `write_source_gguf` writes an F16 file (norms, biases and rope factors F32: F16 norms abort
   llama.cpp) with the `gguf` package, streaming tensor by tensor from one shared block of random
   numbers, so an 8B source (16 GB) costs seconds of CPU and little memory.
2. `quantize` runs `llama_model_quantize` (Q8_0 or Q4_K_M) on every core; the source is deleted.

Every twin carries `bench.twin = true` and `bench.twin_of = <model id>` in its metadata (the
quantizer copies every key), so a twin file is recognisable wherever it ends up.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from bench.errors import BenchError

# Bump whenever the writer changes what a twin holds: cached twins of an older format are rebuilt.
TWIN_FORMAT = 1
TWIN_ARCHS = ("llama", "qwen2", "gemma3", "phi3")
TWIN_QUANTS = ("Q4_K_M", "Q8_0")
WEIGHT_STD = 0.02
# One block of random F16 values (64 MiB) is reused for every tensor: values do not change speed.
RANDOM_POOL_VALUES = 1 << 25

KEY_TWIN = "bench.twin"
KEY_TWIN_OF = "bench.twin_of"
KEY_SHAPE_HASH = "bench.twin_shape_hash"
KEY_FORMAT = "bench.twin_format"

CACHE_ENV_VAR = "BENCH_TWIN_CACHE"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# gguf.TokenType values (kept literal so an older gguf package writes the same numbers).
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_UNUSED = 1, 3, 5


class TwinError(BenchError):
    """A twin cannot be written for this model (unknown architecture, no shape, quantizer failure)."""


# --------------------------------------------------------------------------- the tensor plan


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a twin. `ne` is ggml's order (innermost first), as gguf-dump prints it."""

    name: str
    ne: tuple[int, ...]
    kind: str  # "weight" (F16, quantized later) | "norm" | "bias" | "rope" (F32, kept as is)

    @property
    def numpy_shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        return math.prod(self.ne)


def twin_arch(arch: str) -> str:
    """The GGUF architecture a manifest `arch` is written as (mistral is `llama` in GGUF)."""
    name = arch.lower()
    if name == "mistral":
        name = "llama"
    if name not in TWIN_ARCHS:
        raise TwinError(f"no twin writer for architecture {arch!r}; twins exist for {', '.join(TWIN_ARCHS)} and mistral")
    return name


def tensor_plan(arch: str, shape) -> list[TensorSpec]:
    """Every tensor a real GGUF of this architecture and shape holds, in the converter's order."""
    arch = twin_arch(arch)
    s = shape
    extra = s.extra or {}
    n_q = s.n_head * s.head_dim
    n_kv = s.n_head_kv * s.head_dim
    fused_qkv = bool(extra.get("fused_qkv"))
    fused_gate_up = bool(extra.get("fused_gate_up"))
    plan = [TensorSpec("token_embd.weight", (s.n_embd, s.n_vocab), "weight")]
    if arch == "llama" and extra.get("rope_scaling") == "llama3":
        plan.append(TensorSpec("rope_freqs.weight", (s.head_dim // 2,), "rope"))
    if arch == "phi3" and extra.get("rope_scaling") == "longrope":
        plan.append(TensorSpec("rope_factors_long.weight", (s.head_dim // 2,), "rope"))
        plan.append(TensorSpec("rope_factors_short.weight", (s.head_dim // 2,), "rope"))
    for i in range(s.n_layer):
        b = f"blk.{i}."
        plan.append(TensorSpec(b + "attn_norm.weight", (s.n_embd,), "norm"))
        if fused_qkv:
            plan.append(TensorSpec(b + "attn_qkv.weight", (s.n_embd, n_q + 2 * n_kv), "weight"))
        else:
            plan.append(TensorSpec(b + "attn_q.weight", (s.n_embd, n_q), "weight"))
            plan.append(TensorSpec(b + "attn_k.weight", (s.n_embd, n_kv), "weight"))
            plan.append(TensorSpec(b + "attn_v.weight", (s.n_embd, n_kv), "weight"))
        if s.attn_bias:
            if fused_qkv:
                plan.append(TensorSpec(b + "attn_qkv.bias", (n_q + 2 * n_kv,), "bias"))
            else:
                plan.append(TensorSpec(b + "attn_q.bias", (n_q,), "bias"))
                plan.append(TensorSpec(b + "attn_k.bias", (n_kv,), "bias"))
                plan.append(TensorSpec(b + "attn_v.bias", (n_kv,), "bias"))
        if arch == "gemma3":
            plan.append(TensorSpec(b + "attn_q_norm.weight", (s.head_dim,), "norm"))
            plan.append(TensorSpec(b + "attn_k_norm.weight", (s.head_dim,), "norm"))
        plan.append(TensorSpec(b + "attn_output.weight", (n_q, s.n_embd), "weight"))
        if arch == "gemma3":
            plan.append(TensorSpec(b + "post_attention_norm.weight", (s.n_embd,), "norm"))
        plan.append(TensorSpec(b + "ffn_norm.weight", (s.n_embd,), "norm"))
        if fused_gate_up:
            plan.append(TensorSpec(b + "ffn_up.weight", (s.n_embd, 2 * s.n_ff), "weight"))
        else:
            plan.append(TensorSpec(b + "ffn_gate.weight", (s.n_embd, s.n_ff), "weight"))
            plan.append(TensorSpec(b + "ffn_up.weight", (s.n_embd, s.n_ff), "weight"))
        plan.append(TensorSpec(b + "ffn_down.weight", (s.n_ff, s.n_embd), "weight"))
        if arch == "gemma3":
            plan.append(TensorSpec(b + "post_ffw_norm.weight", (s.n_embd,), "norm"))
    plan.append(TensorSpec("output_norm.weight", (s.n_embd,), "norm"))
    if not s.tied_embeddings:
        plan.append(TensorSpec("output.weight", (s.n_embd, s.n_vocab), "weight"))
    return plan


def check_shape(arch: str, shape) -> None:
    """Refuse shapes llama.cpp's loader would refuse, before writing gigabytes."""
    if shape is None:
        raise TwinError("the manifest entry has no [model.shape]; a twin needs the exact architecture")
    arch = twin_arch(arch)
    extra = shape.extra or {}
    if arch in ("llama", "phi3", "qwen2") and shape.n_head * shape.head_dim != shape.n_embd:
        raise TwinError(
            f"{arch}: n_head x head_dim ({shape.n_head} x {shape.head_dim}) must equal n_embd ({shape.n_embd})"
        )
    if arch == "gemma3" and not extra.get("sliding_window"):
        raise TwinError("gemma3: [model.shape] needs sliding_window (llama.cpp's gemma3 loader reads it)")
    if shape.head_dim % 2:
        raise TwinError(f"head_dim must be even for rotary embeddings, got {shape.head_dim}")
    if shape.n_vocab < 256 + len(SPECIAL_TOKENS):
        raise TwinError(f"n_vocab must be at least {256 + len(SPECIAL_TOKENS)} (byte tokens + specials), got {shape.n_vocab}")


def shape_hash(arch: str, shape) -> str:
    """A short hash of everything that decides a twin's bytes: cached twins are keyed by it."""
    data = {"format": TWIN_FORMAT, "arch": twin_arch(arch), "shape": asdict(shape)}
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- vocabulary


def _byte_symbols() -> list[str]:
    """GPT-2's bytes_to_unicode: every byte as one printable character, in byte order."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1))
    printable |= set(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = [], 0
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


_WORD_RE = re.compile(r" ?[A-Za-z]+")


def vocabulary(n_vocab: int, words: Iterable[str] = ()) -> tuple[list[str], list[int], list[str]]:
    """Tokens, token types and BPE merges: exactly `n_vocab` tokens llama.cpp's GPT-2 tokenizer takes.

    The 256 byte symbols come first (so any text tokenizes), then whole words built by merge chains
    (" the" = "Ġ t", "Ġt h", "Ġth e") so English prompts take about as many tokens as with a real
    tokenizer, then ChatML's special tokens, then unused fillers up to `n_vocab`.
    """
    byte_sym = _byte_symbols()
    tokens = list(byte_sym)
    known = set(tokens)
    merges: list[str] = []
    budget = n_vocab - len(SPECIAL_TOKENS)
    # Merge ranks grow with the prefix length, so BPE joins every word left to right.
    chains: dict[int, list[tuple[str, str]]] = {}
    for word in words:
        sym = [byte_sym[b] for b in word.encode("utf-8")]
        prefix = sym[0]
        for k, nxt in enumerate(sym[1:], start=2):
            merged = prefix + nxt
            chains.setdefault(k, []).append((prefix, nxt))
            prefix = merged
    for k in sorted(chains):
        for left, right in chains[k]:
            merged = left + right
            if merged in known or left not in known or right not in known:
                continue
            if len(tokens) >= budget:
                break
            tokens.append(merged)
            known.add(merged)
            merges.append(f"{left} {right}")
    types = [TOKEN_NORMAL] * len(tokens)
    for special in SPECIAL_TOKENS:
        tokens.append(special)
        types.append(TOKEN_CONTROL)
    filler = 0
    while len(tokens) < n_vocab:
        tokens.append(f"<|twin_unused_{filler}|>")
        types.append(TOKEN_UNUSED)
        filler += 1
    return tokens, types, merges


def common_words(texts: Iterable[str], limit: int) -> list[str]:
    """The most frequent words (with their leading space, GPT-2 style) of some texts."""
    counts: dict[str, int] = {}
    for text in texts:
        for word in _WORD_RE.findall(text):
            counts[word] = counts.get(word, 0) + 1
    ranked = sorted(counts, key=lambda w: (-counts[w], w))
    return ranked[:limit]


def suite_words(limit: int = 4000) -> list[str]:
    """Frequent words of the task suite's prompts (empty when the suite is not importable)."""
    try:
        from scoring.tasks import load_suite

        suite = load_suite()
        texts = []
        for preset in ("full", "quick"):
            try:
                requests = suite.requests(preset)
            except Exception:  # noqa: BLE001 - a preset this suite lacks
                continue
            texts += [m["content"] for r in requests for m in r.messages]
            break
    except Exception:  # noqa: BLE001 - twins must not depend on the suite being well
        return []
    return common_words(texts, limit)


# --------------------------------------------------------------------------- writing the source


class _PooledTensor:
    """Looks like a numpy array to GGUFWriter.write_tensor_data, writes the random pool tiled."""

    def __init__(self, pool: np.ndarray, n_elements: int):
        self._pool = pool
        self._n = n_elements
        self.nbytes = n_elements * pool.itemsize

    def tofile(self, fout) -> None:
        left = self._n
        while left > 0:
            n = min(left, self._pool.size)
            fout.write(memoryview(self._pool[:n]).cast("B"))
            left -= n

    def byteswap(self, inplace: bool = False):  # pragma: no cover - big-endian hosts only
        raise TwinError("twins are written little-endian only")


def _rope_values(spec: TensorSpec, shape) -> np.ndarray:
    """Rope factors as the converters compute them (llama3 frequency scaling; phi3 longrope)."""
    extra = shape.extra or {}
    n = spec.ne[0]
    if spec.name == "rope_freqs.weight":
        base = shape.rope_freq_base
        dim = shape.head_dim
        factor = float(extra.get("rope_scaling_factor", 8.0))
        low = float(extra.get("rope_low_freq_factor", 1.0))
        high = float(extra.get("rope_high_freq_factor", 4.0))
        old_ctx = float(extra.get("rope_original_context_length", 8192))
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        values = []
        for freq in 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)):
            wavelen = 2 * math.pi / freq
            if wavelen < high_wavelen:
                values.append(1.0)
            elif wavelen > low_wavelen:
                values.append(factor)
            else:
                smooth = (old_ctx / wavelen - low) / (high - low)
                values.append(1.0 / ((1 - smooth) / factor + smooth))
        return np.asarray(values, dtype=np.float32)
    if spec.name == "rope_factors_long.weight":
        return np.linspace(1.0, 40.0, n, dtype=np.float32)  # the shape of Phi-3.5's long factors
    return np.ones(n, dtype=np.float32)


def _small_values(spec: TensorSpec, shape, rng: np.random.Generator) -> np.ndarray:
    if spec.kind == "norm":
        return np.ones(spec.ne[0], dtype=np.float32)
    if spec.kind == "bias":
        return (rng.standard_normal(spec.ne[0]) * WEIGHT_STD).astype(np.float32)
    return _rope_values(spec, shape)


def _add_metadata(writer, arch: str, shape, model_id: str, tokens, types, merges) -> None:
    s = shape
    extra = s.extra or {}
    a = arch
    # Not the model id: llama.cpp keys per-model tokenizer quirks on general.name ("phi3" wants "</s>").
    writer.add_string("general.name", "bench random-weight twin")
    writer.add_uint32(f"{a}.context_length", s.context_length)
    writer.add_uint32(f"{a}.embedding_length", s.n_embd)
    writer.add_uint32(f"{a}.block_count", s.n_layer)
    writer.add_uint32(f"{a}.feed_forward_length", s.n_ff)
    writer.add_uint32(f"{a}.attention.head_count", s.n_head)
    writer.add_uint32(f"{a}.attention.head_count_kv", s.n_head_kv)
    writer.add_uint32(f"{a}.rope.dimension_count", s.head_dim)
    if s.head_dim * s.n_head != s.n_embd:
        writer.add_uint32(f"{a}.attention.key_length", int(extra.get("n_embd_head_k", s.head_dim)))
        writer.add_uint32(f"{a}.attention.value_length", int(extra.get("n_embd_head_v", s.head_dim)))
    writer.add_float32(f"{a}.rope.freq_base", float(s.rope_freq_base))
    writer.add_float32(f"{a}.attention.layer_norm_rms_epsilon", float(s.norm_eps))
    writer.add_uint32(f"{a}.vocab_size", s.n_vocab)
    if extra.get("sliding_window"):
        writer.add_uint32(f"{a}.attention.sliding_window", int(extra["sliding_window"]))
    if arch == "gemma3":
        if extra.get("sliding_window_pattern"):
            writer.add_uint32(f"{a}.attention.sliding_window_pattern", int(extra["sliding_window_pattern"]))
        if extra.get("rope_freq_base_swa"):
            writer.add_float32(f"{a}.rope.freq_base_swa", float(extra["rope_freq_base_swa"]))
        if extra.get("rope_scaling") == "linear":
            writer.add_string(f"{a}.rope.scaling.type", "linear")
            writer.add_float32(f"{a}.rope.scaling.factor", float(extra.get("rope_scaling_factor", 1.0)))
    if arch == "phi3" and extra.get("rope_scaling") == "longrope":
        orig = int(extra.get("rope_original_context_length", 4096))
        scale = s.context_length / orig
        writer.add_uint32(f"{a}.rope.scaling.original_context_length", orig)
        writer.add_float32(f"{a}.rope.scaling.attn_factor", math.sqrt(1 + math.log(scale) / math.log(orig)))
    writer.add_uint32("general.file_type", 1)  # LLAMA_FTYPE_MOSTLY_F16 (norms F32, as converters write)

    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_string("tokenizer.ggml.pre", "default")
    writer.add_array("tokenizer.ggml.tokens", tokens)
    writer.add_array("tokenizer.ggml.token_type", types)
    writer.add_array("tokenizer.ggml.merges", merges)
    writer.add_uint32("tokenizer.ggml.bos_token_id", tokens.index("<|endoftext|>"))
    writer.add_uint32("tokenizer.ggml.eos_token_id", tokens.index("<|im_end|>"))
    writer.add_bool("tokenizer.ggml.add_bos_token", False)
    writer.add_string("tokenizer.chat_template", CHATML_TEMPLATE)

    writer.add_bool(KEY_TWIN, True)
    writer.add_string(KEY_TWIN_OF, model_id)
    writer.add_string(KEY_SHAPE_HASH, shape_hash(arch, shape))
    writer.add_uint32(KEY_FORMAT, TWIN_FORMAT)


def write_source_gguf(path: str | Path, model_id: str, arch: str, shape, *, seed: int = 0,
                      words: Iterable[str] | None = None, pool_values: int = RANDOM_POOL_VALUES) -> Path:
    """Write the unquantized (F16 matrices, F32 vectors) twin to `path`; returns the path."""
    import gguf

    check_shape(arch, shape)
    arch = twin_arch(arch)
    path = Path(path)
    plan = tensor_plan(arch, shape)
    tokens, types, merges = vocabulary(shape.n_vocab, suite_words() if words is None else words)
    rng = np.random.default_rng(seed)
    largest = max(t.n_elements for t in plan if t.kind == "weight")
    pool = (rng.standard_normal(min(pool_values, largest), dtype=np.float32) * WEIGHT_STD).astype(np.float16)

    writer = gguf.GGUFWriter(str(path), arch)
    _add_metadata(writer, arch, shape, model_id, tokens, types, merges)
    small: dict[str, np.ndarray] = {}
    for spec in plan:
        if spec.kind == "weight":
            writer.add_tensor_info(spec.name, spec.numpy_shape, np.dtype(np.float16), spec.n_elements * 2)
        else:
            small[spec.name] = _small_values(spec, shape, rng)
            writer.add_tensor_info(spec.name, spec.numpy_shape, np.dtype(np.float32), spec.n_elements * 4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for spec in plan:
        data = small[spec.name] if spec.kind != "weight" else _PooledTensor(pool, spec.n_elements)
        writer.write_tensor_data(data)
    writer.close()
    return path


# --------------------------------------------------------------------------- quantizing


def quantize(src: str | Path, dst: str | Path, quant: str, nthread: int | None = None,
             log: Callable[[str], None] | None = None, set_strings: dict[str, str] | None = None) -> None:
    """llama.cpp's own quantizer (the code path of llama-quantize), on every core by default.

    `set_strings` overrides string metadata in the output (the quantizer copies every other key).
    """
    import ctypes

    import llama_cpp as ll

    ftypes = {"Q4_K_M": ll.LLAMA_FTYPE_MOSTLY_Q4_K_M, "Q8_0": ll.LLAMA_FTYPE_MOSTLY_Q8_0}
    if quant not in ftypes:
        raise TwinError(f"twins are quantized to {' or '.join(TWIN_QUANTS)}, not {quant!r}")
    params = ll.llama_model_quantize_default_params()
    params.ftype = ftypes[quant]
    params.nthread = nthread or os.cpu_count() or 1
    overrides = None
    if set_strings:
        overrides = (ll.llama_model_kv_override * (len(set_strings) + 1))()  # zeroed last entry ends it
        for o, (key, value) in zip(overrides, set_strings.items()):
            o.tag = ll.LLAMA_KV_OVERRIDE_TYPE_STR
            o.key = key.encode()[:127]
            o.value.val_str = value.encode()[:127]
        params.kv_overrides = ctypes.cast(overrides, ctypes.POINTER(ll.llama_model_kv_override))
    errors: list[str] = []

    def on_log(level, text, user_data):  # keep llama.cpp's chatter out of the terminal
        try:
            line = text.decode("utf-8", errors="replace").rstrip() if text else ""
            if level == 4 and line:  # GGML_LOG_LEVEL_ERROR
                errors.append(line)
            if log is not None and line:
                log(line)
        except Exception:  # noqa: BLE001 - never unwind into C
            pass

    callback = ll.llama_log_callback(on_log)
    ll.llama_log_set(callback, ctypes.c_void_p(0))
    try:
        rc = ll.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    finally:
        # Back to llama.cpp's own logger before `callback` is garbage: C must never call a freed thunk.
        ll.llama_log_set(ctypes.cast(None, ll.llama_log_callback), ctypes.c_void_p(0))
    if rc != 0:
        Path(dst).unlink(missing_ok=True)
        raise TwinError(f"llama.cpp could not quantize {src} to {quant}" + (f": {errors[0]}" if errors else ""))


# --------------------------------------------------------------------------- twins on disk


def twin_cache_dir() -> Path:
    """$BENCH_TWIN_CACHE, else $XDG_CACHE_HOME/bench/twins, else ~/.cache/bench/twins."""
    env = os.environ.get(CACHE_ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "bench" / "twins"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def twin_file_name(model_id: str, quant: str, arch: str, shape) -> str:
    return f"{_safe(model_id)}.{quant}.{shape_hash(arch, shape)}.gguf"


@dataclass
class TwinFile:
    """A twin on disk and how it came to be."""

    model_id: str
    quant: str
    path: Path
    size_bytes: int
    shape_hash: str
    reused: bool
    write_s: float | None = None  # writing the F16 source
    quantize_s: float | None = None


def read_twin_marker(path: str | Path) -> dict | None:
    """The twin keys of a GGUF ({"twin": True, "twin_of": ..., ...}), or None for a real model."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception:  # noqa: BLE001 - not a GGUF, or truncated
        return None
    fields = reader.fields
    if KEY_TWIN not in fields:
        return None

    def value(key):
        f = fields.get(key)
        if f is None:
            return None
        return f.contents() if hasattr(f, "contents") else _field_value(f)

    return {"twin": bool(value(KEY_TWIN)), "twin_of": value(KEY_TWIN_OF),
            "shape_hash": value(KEY_SHAPE_HASH), "format": value(KEY_FORMAT)}


def _field_value(field):  # older gguf packages lack ReaderField.contents()
    part = field.parts[field.data[0]]
    if field.types and field.types[0] == 8:  # GGUFValueType.STRING
        return bytes(part).decode("utf-8")
    return part.tolist()[0]


def make_twins(model_id: str, arch: str, shape, quants: Iterable[str], out_paths: dict[str, Path] | None = None,
               cache_dir: Path | None = None, nthread: int | None = None, force: bool = False,
               progress: Callable[[str], None] | None = None,
               ids_by_quant: dict[str, str] | None = None) -> list[TwinFile]:
    """Twins of one model at each quant; the F16 source is written once and deleted afterwards.

    `ids_by_quant` names the manifest entry each quant's twin stands for (e.g. the model's Q8_0
    entry for the Q8_0 twin), default `model_id`. A twin already on disk with the same shape
    hash is reused unless `force`.
    """
    say = progress or (lambda message: None)
    quants = list(dict.fromkeys(quants))
    for quant in quants:
        if quant not in TWIN_QUANTS:
            raise TwinError(f"twins are quantized to {' or '.join(TWIN_QUANTS)}, not {quant!r}")
    check_shape(arch, shape)
    digest = shape_hash(arch, shape)
    cache = Path(cache_dir) if cache_dir is not None else twin_cache_dir()
    ids = {quant: (ids_by_quant or {}).get(quant, model_id) for quant in quants}
    targets = {}
    for quant in quants:
        given = (out_paths or {}).get(quant)
        targets[quant] = Path(given) if given is not None else cache / twin_file_name(ids[quant], quant, arch, shape)
    results: list[TwinFile] = []
    todo = []
    for quant in quants:
        path = targets[quant]
        marker = read_twin_marker(path) if path.is_file() and not force else None
        if marker and marker.get("shape_hash") == digest and marker.get("twin_of") == ids[quant]:
            results.append(TwinFile(ids[quant], quant, path, path.stat().st_size, digest, reused=True))
            say(f"{ids[quant]} {quant}: reusing {path}")
        else:
            todo.append(quant)
    if not todo:
        return results
    work_parent = targets[todo[0]].parent
    work_parent.mkdir(parents=True, exist_ok=True)
    _check_space(work_parent, shape, arch, len(todo))
    work = Path(_mkdtemp(work_parent))
    try:
        src = work / "source-f16.gguf"
        say(f"{model_id}: writing the F16 source ({_gib(_source_bytes(arch, shape))}) …")
        t0 = time.perf_counter()
        write_source_gguf(src, model_id, arch, shape)
        write_s = time.perf_counter() - t0
        say(f"{model_id}: source written in {write_s:.1f} s")
        for quant in todo:
            path = targets[quant]
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = work / f"twin-{quant}.gguf"
            say(f"{model_id}: quantizing to {quant} …")
            t1 = time.perf_counter()
            quantize(src, partial, quant, nthread=nthread,
                     set_strings={KEY_TWIN_OF: ids[quant]} if ids[quant] != model_id else None)
            quantize_s = time.perf_counter() - t1
            os.replace(partial, path) if _same_fs(partial, path) else shutil.move(str(partial), str(path))
            size = path.stat().st_size
            say(f"{ids[quant]}: {quant} twin {path} ({_gib(size)}) in {quantize_s:.1f} s")
            results.append(TwinFile(ids[quant], quant, path, size, digest, reused=False,
                                    write_s=write_s, quantize_s=quantize_s))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    order = {q: i for i, q in enumerate(quants)}
    return sorted(results, key=lambda r: order[r.quant])


def sibling_ids(manifest, entry, quants: Iterable[str]) -> dict[str, str]:
    """For each quant, the manifest id of the same model at that quant (the entry's own id if none)."""
    out = {}
    for quant in quants:
        out[quant] = entry.id
        if manifest is None or quant == entry.quant:
            continue
        for other in manifest.entries:
            if (other.family, other.params_b, other.arch, other.quant) == (entry.family, entry.params_b, entry.arch, quant):
                out[quant] = other.id
                break
    return out


def ensure_twin(entry, quant: str | None = None, cache_dir: Path | None = None,
                progress: Callable[[str], None] | None = None, manifest=None) -> TwinFile:
    """The twin of a manifest entry at `quant` (default: the entry's own), written if not cached."""
    quant = quant or entry.quant
    if quant not in TWIN_QUANTS:
        raise TwinError(f"{entry.id} is {entry.quant}: twins are quantized to {' or '.join(TWIN_QUANTS)} "
                        "(name a Q4_K_M or Q8_0 model, or pass a twin quant)")
    if entry.shape is None:
        raise TwinError(f"{entry.id}: the manifest entry has no [model.shape]; a twin needs the exact architecture")
    return make_twins(entry.id, entry.arch, entry.shape, [quant], cache_dir=cache_dir, progress=progress,
                      ids_by_quant=sibling_ids(manifest, entry, [quant]))[0]


def _source_bytes(arch: str, shape) -> int:
    return sum(t.n_elements * (2 if t.kind == "weight" else 4) for t in tensor_plan(arch, shape))


def _check_space(folder: Path, shape, arch: str, n_quants: int) -> None:
    need = int(_source_bytes(arch, shape) * (1 + 0.6 * n_quants))  # F16 source + Q8_0-sized outputs
    free = shutil.disk_usage(folder).free
    if free < need:
        raise TwinError(f"not enough disk space in {folder}: a twin needs about {_gib(need)}, {_gib(free)} free")


def _mkdtemp(parent: Path) -> str:
    import tempfile

    return tempfile.mkdtemp(prefix=".twin-work-", dir=parent)


def _same_fs(a: Path, b: Path) -> bool:
    try:
        return os.stat(a.parent).st_dev == os.stat(b.parent).st_dev
    except OSError:
        return False


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
