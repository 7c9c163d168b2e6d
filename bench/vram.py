"""How much GPU memory a configuration needs, worked out before anything is loaded.

llama.cpp puts on the GPU, for a model loaded with `n_gpu_layers = k`:

- weights: the last `k` of its `n_layer + 1` layers, where layer `n_layer` is the output layer
  (output norm and LM head; for tied embeddings a second copy of `token_embd`, which llama.cpp
  duplicates into the output layer's buffer). `token_embd` itself always stays in host memory
  ("the input layer is always on the CPU", llama-model.cpp). On CUDA each quantized tensor whose
  rows are not a multiple of 512 is padded to one (MATRIX_ROW_PADDING).
- the KV cache of every offloaded repeating layer: cells x (n_head_kv x head_dim_k bytes of K +
  n_head_kv x head_dim_v bytes of V) in the cache type (f16: 2 bytes per element; q8_0: 34 bytes
  per 32; q4_0: 18 bytes per 32). Cells are n_ctx padded to 256, as llama.cpp pads it. Sliding-
  window layers (gemma3: five in six) keep only `n_swa + n_ubatch` cells (padded to 256) unless
  `swa_full`, which llama.cpp's C API turns on by default (llama_context_default_params), so by
  default they cost as much as the others.
- compute buffers: `n_ubatch x` the largest per-token working set of one graph stage (see
  `compute_bytes`), fitted to the sizes llama.cpp reports on the CPU ("compute buffer size"); the
  CUDA figure is checked by benchmarks/gpu_vram_depth.py.
- a fixed overhead for the CUDA context, cuBLAS and the loaded kernels (`OVERHEAD_BYTES`, settable
  with $BENCH_VRAM_OVERHEAD_MIB), which NVML counts against the process but llama.cpp never prints.

`predict_vram` works from a GGUF's tensor list (exact weight bytes) or, for a model not on disk, from
a manifest entry's shape and size (an estimate, marked as such). `check_fit` compares a prediction
with the free memory NVML reports and refuses, or with `allow_partial` says how many layers fit.
`detect_spill` flags a loaded configuration whose layers or memory show it is not all on the GPU.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from bench.errors import BenchError

MIB = 1024**2
GIB = 1024**3

# llama.cpp pads the context (and so the KV cache) to a multiple of 256 cells (llama-context.cpp).
KV_PAD_CELLS = 256
# CUDA pads quantized rows to a multiple of this many elements (ggml-cuda MATRIX_ROW_PADDING).
CUDA_MATRIX_ROW_PADDING = 512
CUDA_TENSOR_ALIGN = 128
# CUDA context + cuBLAS workspace + kernel images, as NVML counts them for the process. The
# default is a first guess for a CUDA 12 build on a data-centre card; benchmarks/gpu_vram_depth.py
# prints the value that fits the host it runs on.
# CUDA context, cuBLAS and kernels as NVML counts them: 602-612 MiB implied on an H200 (driver 580,
# CUDA 13) for three twins (benchmarks/RESULTS.md); other cards and drivers differ: set the variable.
DEFAULT_OVERHEAD_MIB = 606
OVERHEAD_ENV_VAR = "BENCH_VRAM_OVERHEAD_MIB"
# Headroom check_fit keeps free beyond the prediction: its error and whatever else starts meanwhile.
FIT_MARGIN_FRACTION = 0.05
FIT_MARGIN_MIN_BYTES = 256 * MIB
# A loaded configuration whose measured GPU memory is this far below the prediction is flagged.
SPILL_SHORTFALL_FRACTION = 0.30

DEFAULT_N_UBATCH = 512

# Sliding-window layer patterns llama.cpp uses when the GGUF has no explicit pattern key:
# every n-th layer is global, the others slide (llama-model.cpp, set_swa_pattern).
SWA_DEFAULT_PATTERN = {"gemma2": 2, "gemma3": 6, "cohere2": 4}


class VramError(BenchError):
    """The VRAM needed cannot be worked out (unreadable GGUF, unknown KV type, no shape)."""


@dataclass(frozen=True)
class KvType:
    name: str
    ggml_type: int  # GGML_TYPE_* as llama_context_params.type_k / type_v take it
    block_elements: int
    block_bytes: int

    def row_bytes(self, n_elements: int) -> int:
        if n_elements % self.block_elements:
            raise VramError(
                f"KV type {self.name} stores blocks of {self.block_elements} values; a row of {n_elements} "
                f"(n_head_kv x head_dim) does not divide into them"
            )
        return n_elements // self.block_elements * self.block_bytes


# ggml's type numbers and block sizes (ggml.h, ggml.c type_traits); the ones llama.cpp accepts
# for its KV cache.
KV_TYPES: dict[str, KvType] = {
    "f32": KvType("f32", 0, 1, 4),
    "f16": KvType("f16", 1, 1, 2),
    "bf16": KvType("bf16", 30, 1, 2),
    "q8_0": KvType("q8_0", 8, 32, 34),
    "q4_0": KvType("q4_0", 2, 32, 18),
    "q4_1": KvType("q4_1", 3, 32, 20),
    "q5_0": KvType("q5_0", 6, 32, 22),
    "q5_1": KvType("q5_1", 7, 32, 24),
    "iq4_nl": KvType("iq4_nl", 20, 32, 18),
}


def kv_type_of(name: str) -> KvType:
    try:
        return KV_TYPES[name.lower()]
    except KeyError:
        raise VramError(f"unknown KV cache type {name!r}; expected one of {', '.join(KV_TYPES)}") from None


def overhead_bytes() -> int:
    """The fixed per-process GPU overhead: $BENCH_VRAM_OVERHEAD_MIB, else the built-in guess."""
    raw = os.environ.get(OVERHEAD_ENV_VAR, "").strip()
    if raw:
        try:
            value = float(raw)
        except ValueError:
            raise VramError(f"${OVERHEAD_ENV_VAR} must be a number of MiB, got {raw!r}") from None
        if value < 0:
            raise VramError(f"${OVERHEAD_ENV_VAR} must not be negative, got {raw!r}")
        return int(value * MIB)
    return DEFAULT_OVERHEAD_MIB * MIB


# --------------------------------------------------------------------------- model geometry


@dataclass(frozen=True)
class ModelGeometry:
    """What the prediction needs to know about a model: shapes and where its weight bytes sit."""

    name: str
    arch: str
    n_layer: int
    n_vocab: int
    n_embd: int
    n_ff: int  # the largest layer's
    n_head: int  # the largest layer's query heads
    n_embd_q: int  # n_head x head_dim_k
    n_embd_k_gqa: tuple[int, ...]  # per layer: n_head_kv x head_dim_k
    n_embd_v_gqa: tuple[int, ...]  # per layer: n_head_kv x head_dim_v
    swa_layers: tuple[bool, ...]  # per layer: a sliding-window layer
    n_swa: int  # sliding window in tokens (0: none)
    input_bytes: int  # host-only tensors (token embeddings)
    output_bytes: int  # the output layer's tensors on the device (incl. a tied embedding's copy)
    layer_bytes: tuple[int, ...]  # each repeating layer's tensors on the device
    tied_embeddings: bool
    estimated: bool  # True: from a manifest shape and size, not from the file's tensors
    file_bytes: int | None = None

    @property
    def n_layers_total(self) -> int:
        """Layers llama.cpp counts for offloading: the repeating ones plus the output layer."""
        return self.n_layer + 1


_BLOCK = re.compile(r"^blk\.(\d+)\.")
# Tensors llama.cpp keeps in host memory: the input layer (llama-arch.cpp LLM_TENSOR_LAYER_INPUT).
_INPUT_TENSORS = ("token_embd.weight", "token_embd_norm.weight", "token_embd_norm.bias",
                  "position_embd.weight", "token_types.weight", "per_layer_token_embd.weight")


def _cuda_tensor_bytes(n_bytes: int, ne0: int, type_id: int) -> int:
    """A tensor's size in a CUDA buffer: quantized rows padded to 512 elements, then aligned."""
    import gguf

    size = n_bytes
    try:
        qtype = gguf.GGMLQuantizationType(type_id)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        block, type_size = 1, 0
    if block > 1 and ne0 % CUDA_MATRIX_ROW_PADDING:
        pad = CUDA_MATRIX_ROW_PADDING - ne0 % CUDA_MATRIX_ROW_PADDING
        size += pad // block * type_size
    return -(-size // CUDA_TENSOR_ALIGN) * CUDA_TENSOR_ALIGN


# --------------------------------------------------------------------------- reading GGUF headers
#
# gguf.GGUFReader builds a numpy view of every array element on open: about 10 s for a 49k-token
# vocabulary and far longer for gemma3's 262k, too slow for a check before every load. This reader
# walks the header once with struct, keeps scalars and the arrays asked for, and skips the rest.

_GGUF_MAGIC = b"GGUF"
# GGUFValueType -> struct format of one scalar (8 = string, 9 = array are handled apart).
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: ne0 (row length) first
    type_id: int
    n_bytes: int


@dataclass(frozen=True)
class GgufHeader:
    fields: dict[str, Any]  # scalars and the arrays asked for; other arrays as their length (int)
    tensors: tuple[TensorInfo, ...]


def _tensor_bytes(shape: Sequence[int], type_id: int) -> int:
    import gguf

    try:
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
    except (ValueError, KeyError):
        raise VramError(f"unknown tensor type {type_id}") from None
    n = 1
    for d in shape:
        n *= int(d)
    return n // block * type_size


def read_gguf_header(path: str | Path, keep_arrays: Iterable[str] = ()) -> GgufHeader:
    """The metadata and tensor list of a GGUF file, without reading its tensor data."""
    import mmap
    import struct

    keep = set(keep_arrays)
    path = Path(path)
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise VramError(f"{path}: no such file") from None
    except OSError as exc:
        raise VramError(f"{path}: cannot read ({exc.strerror})") from None
    with fh:
        try:
            data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:
            raise VramError(f"{path}: not a readable GGUF file (empty)") from None
        try:
            pos = 0

            def take(fmt: str):
                nonlocal pos
                values = struct.unpack_from("<" + fmt, data, pos)
                pos += struct.calcsize("<" + fmt)
                return values[0] if len(values) == 1 else values

            def string() -> str:
                nonlocal pos
                n = take("Q")
                if n > len(data) - pos:
                    raise ValueError("string runs past the end of the file")
                text = bytes(data[pos:pos + n]).decode("utf-8", errors="replace")
                pos += n
                return text

            def value(vtype: int, keep_items: bool):
                nonlocal pos
                if vtype == _STRING:
                    return string()
                if vtype == _ARRAY:
                    itype, count = take("I"), take("Q")
                    if itype in _SCALAR and not keep_items:
                        pos += struct.calcsize("<" + _SCALAR[itype]) * count
                        return count
                    if itype in _SCALAR:
                        fmt = f"<{count}{_SCALAR[itype]}"
                        items = list(struct.unpack_from(fmt, data, pos))
                        pos += struct.calcsize(fmt)
                        return items
                    if itype == _STRING and not keep_items:
                        unpack = struct.Struct("<Q").unpack_from
                        for _ in range(count):  # skip: each string is its u64 length, then bytes
                            pos += 8 + unpack(data, pos)[0]
                        return count
                    items = [value(itype, keep_items) for _ in range(count)]
                    return items if keep_items else count
                if vtype not in _SCALAR:
                    raise ValueError(f"unknown metadata value type {vtype}")
                return take(_SCALAR[vtype])

            if bytes(data[:4]) != _GGUF_MAGIC:
                raise ValueError("no GGUF magic")
            pos = 4
            version = take("I")
            if version < 2:
                raise ValueError(f"GGUF version {version} is too old")
            n_tensors, n_kv = take("Q"), take("Q")
            fields: dict[str, Any] = {}
            for _ in range(n_kv):
                key = string()
                vtype = take("I")
                # Small arrays (per-layer head counts, SWA patterns) are always kept.
                fields[key] = value(vtype, keep_items=key in keep or not key.startswith("tokenizer."))
            tensors = []
            for _ in range(n_tensors):
                name = string()
                n_dims = take("I")
                shape = tuple(take("Q") for _ in range(n_dims))
                type_id = take("I")
                take("Q")  # offset into the data section
                tensors.append(TensorInfo(name, shape, type_id, _tensor_bytes(shape, type_id)))
            return GgufHeader(fields, tuple(tensors))
        except (struct.error, ValueError, UnicodeDecodeError) as exc:
            raise VramError(f"{path}: not a readable GGUF file ({' '.join(str(exc).split())})") from None
        finally:
            data.close()


def _field(fields: dict, key: str, default: Any = None) -> Any:
    return fields.get(key, default)


def _per_layer(value: Any, n_layer: int, what: str, path: str) -> list[int]:
    if value is None:
        raise VramError(f"{path}: GGUF metadata lacks {what}")
    if isinstance(value, (list, tuple)):
        if len(value) != n_layer:
            raise VramError(f"{path}: {what} lists {len(value)} values for {n_layer} layers")
        return [int(v) for v in value]
    return [int(value)] * n_layer


def _swa_layers(arch: str, n_layer: int, n_swa: int, pattern: Any) -> list[bool]:
    """Which layers slide, as llama.cpp's set_swa_pattern decides (dense layer last in each group)."""
    if not n_swa:
        return [False] * n_layer
    if isinstance(pattern, (list, tuple)):
        return [bool(v) for v in pattern][:n_layer] + [False] * max(0, n_layer - len(pattern))
    n_pattern = int(pattern) if pattern is not None else SWA_DEFAULT_PATTERN.get(arch)
    if n_pattern is None:
        return [False] * n_layer  # llama.cpp ignores the window for other archs (phi3 disables it)
    return [n_pattern == 0 or (il % n_pattern < n_pattern - 1) for il in range(n_layer)]


def geometry_from_gguf(paths: str | Path | Sequence[str | Path]) -> ModelGeometry:
    """Read shapes from the GGUF's metadata and weight bytes from its tensor list (every part)."""
    parts = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not parts:
        raise VramError("no GGUF file given")
    headers = [read_gguf_header(part) for part in parts]
    fields = headers[0].fields
    path = str(parts[0])
    arch = _field(fields, "general.architecture")
    if not arch:
        raise VramError(f"{path}: GGUF metadata lacks general.architecture")
    n_layer = _field(fields, f"{arch}.block_count")
    n_embd = _field(fields, f"{arch}.embedding_length")
    if n_layer is None or n_embd is None:
        raise VramError(f"{path}: GGUF metadata lacks {arch}.block_count or {arch}.embedding_length")
    n_layer, n_embd = int(n_layer), int(n_embd)
    n_head = _per_layer(_field(fields, f"{arch}.attention.head_count"), n_layer, "attention.head_count", path)
    n_head_kv_raw = _field(fields, f"{arch}.attention.head_count_kv")
    n_head_kv = _per_layer(n_head_kv_raw, n_layer, "attention.head_count_kv", path) if n_head_kv_raw is not None \
        else list(n_head)
    n_ff = _per_layer(_field(fields, f"{arch}.feed_forward_length", 0), n_layer, "feed_forward_length", path)
    head_k = _field(fields, f"{arch}.attention.key_length")
    head_v = _field(fields, f"{arch}.attention.value_length")
    max_head = max(n_head) or 1
    head_k = int(head_k) if head_k is not None else n_embd // max_head
    head_v = int(head_v) if head_v is not None else n_embd // max_head
    n_vocab = _field(fields, f"{arch}.vocab_size")
    if n_vocab is None:
        n_vocab = fields.get("tokenizer.ggml.tokens", 0)  # an array's length when not kept
    n_swa = int(_field(fields, f"{arch}.attention.sliding_window", 0) or 0)
    swa = _swa_layers(arch, n_layer, n_swa, _field(fields, f"{arch}.attention.sliding_window_pattern"))
    if arch == "phi3":
        n_swa, swa = 0, [False] * n_layer  # llama.cpp's phi3 loader disables the window

    input_bytes = output_bytes = 0
    layer_bytes = [0] * n_layer
    names = set()
    embd_device_bytes = 0
    for header in headers:
        for t in header.tensors:
            names.add(t.name)
            ne0 = int(t.shape[0]) if len(t.shape) else 1
            device = _cuda_tensor_bytes(t.n_bytes, ne0, t.type_id)
            m = _BLOCK.match(t.name)
            if m:
                il = int(m.group(1))
                if il < n_layer:
                    layer_bytes[il] += device
                continue
            if t.name in _INPUT_TENSORS:
                input_bytes += int(t.n_bytes)
                if t.name == "token_embd.weight":
                    embd_device_bytes = device
                continue
            output_bytes += device  # output_norm, output, rope factors: the output layer's buffer
    tied = "output.weight" not in names
    if tied:
        output_bytes += embd_device_bytes  # llama.cpp duplicates token_embd as the LM head
    return ModelGeometry(
        name=parts[0].name, arch=arch, n_layer=n_layer, n_vocab=int(n_vocab), n_embd=n_embd,
        n_ff=max(n_ff) if n_ff else 0, n_head=max_head, n_embd_q=max_head * head_k,
        n_embd_k_gqa=tuple(h * head_k for h in n_head_kv), n_embd_v_gqa=tuple(h * head_v for h in n_head_kv),
        swa_layers=tuple(swa), n_swa=n_swa, input_bytes=input_bytes, output_bytes=output_bytes,
        layer_bytes=tuple(layer_bytes), tied_embeddings=tied, estimated=False,
        file_bytes=sum(p.stat().st_size for p in parts),
    )


# Nominal bits per weight of a quant's matrices (Q4_K_M mixes Q4_K with Q6_K: about 4.85 overall).
QUANT_BITS_PER_WEIGHT = {"Q4_K_M": 4.85, "Q8_0": 8.5, "Q4_1": 5.0, "Q4_0": 4.5, "F16": 16.0, "F32": 32.0}
# Metadata beyond the tensors (mostly the vocabulary's strings), per vocabulary entry: a rough figure.
_METADATA_BYTES_PER_TOKEN = 24


def _plan_for(entry) -> list[tuple[str, int, bool]]:
    """(name, n_elements, is_matrix) for every tensor of the entry's shape.

    The twin writer's tensor plan is the exact tensor list of each architecture it knows; other
    architectures fall back to the generic llama-like list.
    """
    s = entry.shape
    try:
        from bench.twin import tensor_plan

        return [(t.name, t.n_elements, t.kind == "weight") for t in tensor_plan(entry.arch, s)]
    except (ImportError, BenchError):
        pass
    n_q, n_kv = s.n_head * s.head_dim, s.n_head_kv * s.head_dim
    plan = [("token_embd.weight", s.n_vocab * s.n_embd, True)]
    for i in range(s.n_layer):
        b = f"blk.{i}."
        plan += [(b + "attn_norm.weight", s.n_embd, False), (b + "attn_q.weight", s.n_embd * n_q, True),
                 (b + "attn_k.weight", s.n_embd * n_kv, True), (b + "attn_v.weight", s.n_embd * n_kv, True),
                 (b + "attn_output.weight", n_q * s.n_embd, True), (b + "ffn_norm.weight", s.n_embd, False),
                 (b + "ffn_gate.weight", s.n_embd * s.n_ff, True), (b + "ffn_up.weight", s.n_embd * s.n_ff, True),
                 (b + "ffn_down.weight", s.n_ff * s.n_embd, True)]
    plan.append(("output_norm.weight", s.n_embd, False))
    if not s.tied_embeddings:
        plan.append(("output.weight", s.n_vocab * s.n_embd, True))
    return plan


def geometry_from_entry(entry) -> ModelGeometry:
    """An estimate from a manifest entry's [model.shape] and size_bytes (no file needed).

    Matrix bytes are the quant's nominal bits per weight, scaled so that all tensors plus the
    metadata add up to the entry's size_bytes where the manifest has it.
    """
    s = entry.shape
    if s is None:
        raise VramError(f"{entry.id}: the manifest entry has no [model.shape]; cannot predict its VRAM")
    plan = _plan_for(entry)
    bits = QUANT_BITS_PER_WEIGHT.get(entry.quant, 8.5)
    matrix_elements = sum(n for _, n, is_matrix in plan if is_matrix)
    small_bytes = sum(4 * n for _, n, is_matrix in plan if not is_matrix)
    bytes_per_weight = bits / 8
    if entry.size_bytes:
        available = entry.size_bytes - small_bytes - _METADATA_BYTES_PER_TOKEN * s.n_vocab
        if available > 0 and matrix_elements:
            bytes_per_weight = available / matrix_elements
    extra = s.extra or {}
    head_k = int(extra.get("n_embd_head_k", s.head_dim))
    head_v = int(extra.get("n_embd_head_v", s.head_dim))
    n_swa = int(extra.get("sliding_window", 0) or 0)
    arch = entry.arch.lower()
    swa = _swa_layers(arch, s.n_layer, n_swa, extra.get("sliding_window_pattern"))
    if arch == "phi3":
        n_swa, swa = 0, [False] * s.n_layer
    input_bytes = output_bytes = 0
    layer_bytes = [0] * s.n_layer
    embd_bytes = 0
    for name, n, is_matrix in plan:
        size = int(n * bytes_per_weight) if is_matrix else 4 * n
        m = _BLOCK.match(name)
        if m:
            layer_bytes[int(m.group(1))] += size
        elif name in _INPUT_TENSORS:
            input_bytes += size
            embd_bytes = size if name == "token_embd.weight" else embd_bytes
        else:
            output_bytes += size
    if s.tied_embeddings:
        output_bytes += embd_bytes
    return ModelGeometry(
        name=entry.id, arch=arch, n_layer=s.n_layer, n_vocab=s.n_vocab, n_embd=s.n_embd, n_ff=s.n_ff,
        n_head=s.n_head, n_embd_q=s.n_head * head_k, n_embd_k_gqa=(s.n_head_kv * head_k,) * s.n_layer,
        n_embd_v_gqa=(s.n_head_kv * head_v,) * s.n_layer, swa_layers=tuple(swa), n_swa=n_swa,
        input_bytes=input_bytes, output_bytes=output_bytes, layer_bytes=tuple(layer_bytes),
        tied_embeddings=s.tied_embeddings, estimated=True, file_bytes=entry.size_bytes,
    )


def geometry_of(model) -> ModelGeometry:
    """A ModelGeometry from a GGUF path (or list of split parts), a manifest entry, or a geometry."""
    if isinstance(model, ModelGeometry):
        return model
    if isinstance(model, (str, Path)) or (isinstance(model, (list, tuple)) and model
                                          and all(isinstance(p, (str, Path)) for p in model)):
        return geometry_from_gguf(model)
    if hasattr(model, "shape") and hasattr(model, "quant"):
        return geometry_from_entry(model)
    raise VramError(f"cannot predict VRAM for {type(model).__name__}: pass a GGUF path or a manifest entry")


# --------------------------------------------------------------------------- the prediction


def pad_cells(n: int, pad: int = KV_PAD_CELLS) -> int:
    return -(-max(int(n), 1) // pad) * pad


def kv_cells(n_ctx: int, n_parallel: int = 1) -> int:
    """KV cells llama.cpp allocates for a context of n_ctx split over n_parallel sequences."""
    n_ctx = pad_cells(n_ctx)
    per_seq = pad_cells(n_ctx // max(1, n_parallel))
    return per_seq * max(1, n_parallel)


def layer_kv_bytes(geometry: ModelGeometry, il: int, n_ctx: int, k_type: KvType, v_type: KvType | None = None,
                   n_parallel: int = 1, swa_full: bool = True, n_ubatch: int = DEFAULT_N_UBATCH) -> int:
    """One layer's K and V cache in bytes."""
    v_type = v_type or k_type
    cells = kv_cells(n_ctx, n_parallel)
    if geometry.swa_layers[il] and not swa_full and geometry.n_swa:
        # llama_kv_cache_iswa: min(n_ctx, n_swa x n_seq + n_ubatch), padded to 256.
        cells = min(cells, pad_cells(geometry.n_swa * max(1, n_parallel) + n_ubatch))
    return cells * (k_type.row_bytes(geometry.n_embd_k_gqa[il]) + v_type.row_bytes(geometry.n_embd_v_gqa[il]))


def compute_bytes(geometry: ModelGeometry, n_ctx: int, n_ubatch: int = DEFAULT_N_UBATCH,
                  flash_attn: bool = True, output_on_device: bool = True, backend: str = "cpu") -> int:
    """The compute buffer: n_ubatch x the largest per-token working set of one graph stage.

    Per token, in bytes (f32 activations), fitted to llama.cpp's "compute buffer size" on the CPU
    for several shapes (within a few per cent; see tests/test_vram.py):
    - output:    4 n_vocab (the logits row) + 8 n_embd
    - feed-forward: 16 n_ff + the attention mask (2 n_kv_cells as f16)
    - attention with flash attention: 4 (4 n_embd_q + 2 n_embd_kv) + 2 n_kv_cells
    - attention without: 4 (5 n_embd_q + 2 n_embd_kv) + (4 n_head + 4) n_kv_cells (the f32 scores
      of every head against every cached token, plus the mask).
    On CUDA (`backend="cuda"`) the output stage holds two logits-sized f32 buffers: llama.cpp's CUDA
    compute buffers measured on an H200 (llama3.2:1b, qwen2.5:1.5b, gemma3:1b twins, n_ubatch 512:
    505, 597 and 1,027 MiB) are 2 x n_ubatch x n_vocab x 4 bytes to within 4 MiB.
    """
    cells = pad_cells(n_ctx)
    n_kv = max(geometry.n_embd_k_gqa) if geometry.n_embd_k_gqa else geometry.n_embd
    logits_factor = 8 if backend == "cuda" else 4
    output = logits_factor * geometry.n_vocab + 8 * geometry.n_embd if output_on_device else 0
    ffn = 16 * geometry.n_ff + 2 * cells
    if flash_attn:
        attention = 4 * (4 * geometry.n_embd_q + 2 * n_kv) + 2 * cells
    else:
        attention = 4 * (5 * geometry.n_embd_q + 2 * n_kv) + (4 * geometry.n_head + 4) * cells
    return int(n_ubatch) * max(output, ffn, attention)


@dataclass(frozen=True)
class VramPrediction:
    """What a configuration is predicted to hold in GPU memory, by part, in bytes."""

    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    total_bytes: int  # weights + KV + compute + overhead
    per_layer_bytes: int  # one repeating layer's weights + KV cache (the mean over layers)
    overhead_bytes: int = 0
    n_gpu_layers: int = 0  # layers on the GPU, resolved (-1 became n_layer + 1)
    n_layers_total: int = 0  # n_layer + 1 (the output layer counts)
    output_layer_bytes: int = 0
    host_bytes: int = 0  # weights kept in host memory (token embeddings, layers not offloaded)
    layer_bytes: tuple[int, ...] = ()  # every repeating layer's weights + KV, first to last
    n_ctx: int = 0  # KV cells (n_ctx as llama.cpp pads it)
    kv_type: str = "f16"
    flash_attn: bool = True
    n_ubatch: int = DEFAULT_N_UBATCH
    estimated: bool = False  # from a manifest shape, not the file
    model: str = ""
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        data = asdict(self)
        data["layer_bytes"] = list(self.layer_bytes)
        data["notes"] = list(self.notes)
        return data


def predict_vram(gguf_path_or_entry, n_ctx: int, kv_type: str = "f16", n_gpu_layers: int = -1,
                 n_parallel: int = 1, *, flash_attn: bool = True, n_ubatch: int = DEFAULT_N_UBATCH,
                 swa_full: bool = True, kv_type_v: str | None = None,
                 overhead: int | None = None, backend: str = "cuda") -> VramPrediction:
    """Predict the GPU memory of a model loaded with `n_gpu_layers` and a context of `n_ctx`.

    `gguf_path_or_entry`: a GGUF path (or the list of a split file's parts), a manifest entry
    (estimate from its shape and size_bytes) or a ModelGeometry. `n_ctx` is the whole context, as
    llama.cpp's n_ctx (with n_parallel sequences each gets n_ctx / n_parallel). `kv_type` is the K
    cache type and, unless `kv_type_v` is given, the V cache type too. `n_gpu_layers` < 0 means all.
    `swa_full` matches llama_context_default_params (True); False gives sliding-window layers
    their smaller cache. `overhead` replaces the CUDA context allowance (bytes).
    """
    geometry = geometry_of(gguf_path_or_entry)
    k_type = kv_type_of(kv_type)
    v_type = kv_type_of(kv_type_v) if kv_type_v else k_type
    if n_ctx < 1:
        raise VramError(f"n_ctx must be positive, got {n_ctx}")
    total_layers = geometry.n_layers_total
    n_gpu = total_layers if n_gpu_layers < 0 else min(int(n_gpu_layers), total_layers)
    # llama.cpp offloads the last n_gpu layers: the output layer first, then from the top down.
    first_gpu_layer = total_layers - n_gpu

    layer_kv = [layer_kv_bytes(geometry, il, n_ctx, k_type, v_type, n_parallel, swa_full, n_ubatch)
                for il in range(geometry.n_layer)]
    layer_total = tuple(w + kv for w, kv in zip(geometry.layer_bytes, layer_kv))
    on_gpu = [il >= first_gpu_layer for il in range(geometry.n_layer)]
    output_on_gpu = n_gpu >= 1
    weights = sum(w for w, g in zip(geometry.layer_bytes, on_gpu) if g)
    weights += geometry.output_bytes if output_on_gpu else 0
    kv_bytes = sum(kv for kv, g in zip(layer_kv, on_gpu) if g)
    compute = compute_bytes(geometry, kv_cells(n_ctx, n_parallel), n_ubatch, flash_attn, output_on_gpu,
                            backend=backend) if n_gpu else 0
    extra = (overhead_bytes() if overhead is None else int(overhead)) if n_gpu else 0
    host = geometry.input_bytes + sum(w for w, g in zip(geometry.layer_bytes, on_gpu) if not g)
    host += 0 if output_on_gpu else geometry.output_bytes
    notes = []
    if geometry.estimated:
        notes.append("estimated from the manifest's shape and size (file not on disk)")
    if any(geometry.swa_layers):
        notes.append(
            "sliding-window layers use the full cache (swa_full, llama.cpp's default)" if swa_full
            else f"sliding-window layers keep {geometry.n_swa} tokens (+ n_ubatch)"
        )
    return VramPrediction(
        weights_bytes=weights, kv_bytes=kv_bytes, compute_bytes=compute,
        total_bytes=weights + kv_bytes + compute + extra,
        per_layer_bytes=int(sum(layer_total) / len(layer_total)) if layer_total else 0,
        overhead_bytes=extra, n_gpu_layers=n_gpu, n_layers_total=total_layers,
        output_layer_bytes=geometry.output_bytes, host_bytes=host, layer_bytes=layer_total,
        n_ctx=kv_cells(n_ctx, n_parallel), kv_type=k_type.name if v_type is k_type else f"{k_type.name}/{v_type.name}",
        flash_attn=flash_attn, n_ubatch=n_ubatch, estimated=geometry.estimated, model=geometry.name,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- fit decisions


@dataclass(frozen=True)
class FitDecision:
    fits: bool  # the configuration as asked fits
    n_gpu_layers: int  # what to load with: as asked when it fits; what fits with allow_partial; else as asked
    needed_bytes: int
    free_bytes: int | None
    margin_bytes: int
    partial: bool = False  # n_gpu_layers was reduced to fit
    proceed: bool = True  # load (it fits, or allow_partial found a layer count, or free memory is unknown)
    message: str = ""


def fit_margin(prediction: VramPrediction) -> int:
    return max(FIT_MARGIN_MIN_BYTES, int(prediction.total_bytes * FIT_MARGIN_FRACTION))


def _gib(n: int | float | None) -> str:
    return "?" if n is None else f"{n / GIB:.2f} GiB"


def check_fit(prediction: VramPrediction, free_bytes: int | None, allow_partial: bool = False) -> FitDecision:
    """Whether the prediction fits in `free_bytes` (NVML's free memory) with a safety margin.

    Not fitting: refuse (proceed False) with a message naming what would help; with
    `allow_partial`, the largest n_gpu_layers that fits (the output layer goes first, then
    repeating layers from the top, as llama.cpp offloads them). Unknown free memory: proceed.
    """
    margin = fit_margin(prediction)
    need = prediction.total_bytes
    if prediction.n_gpu_layers == 0:
        return FitDecision(True, 0, need, free_bytes, margin, message="nothing offloaded to the GPU")
    if free_bytes is None:
        return FitDecision(True, prediction.n_gpu_layers, need, None, margin,
                           message="free GPU memory unknown (no NVML): not checked")
    if need + margin <= free_bytes:
        return FitDecision(True, prediction.n_gpu_layers, need, free_bytes, margin,
                           message=f"needs ~{_gib(need)} of {_gib(free_bytes)} free")
    what = (f"{prediction.model}: needs ~{_gib(need)} of GPU memory (weights {_gib(prediction.weights_bytes)}, "
            f"KV cache {_gib(prediction.kv_bytes)} at n_ctx {prediction.n_ctx} {prediction.kv_type}, compute "
            f"{_gib(prediction.compute_bytes)}, CUDA overhead {_gib(prediction.overhead_bytes)}) plus a "
            f"{_gib(margin)} margin; {_gib(free_bytes)} free")
    layers = layers_that_fit(prediction, free_bytes - margin)
    if not allow_partial:
        hint = (f"; --allow-partial would offload {layers}/{prediction.n_layers_total} layers" if layers
                else "; not even one layer fits")
        return FitDecision(False, prediction.n_gpu_layers, need, free_bytes, margin, proceed=False,
                           message=what + hint + ", or lower --n-ctx / use --kv-type q8_0")
    if layers == 0:
        return FitDecision(False, 0, need, free_bytes, margin, proceed=False,
                           message=what + "; not even one layer fits")
    return FitDecision(False, layers, need, free_bytes, margin, partial=True, proceed=True,
                       message=what + f"; offloading {layers}/{prediction.n_layers_total} layers (--allow-partial)")


def layers_that_fit(prediction: VramPrediction, budget_bytes: int) -> int:
    """The most layers (output layer first, then from the top) whose bytes fit in budget_bytes."""
    fixed = prediction.compute_bytes + prediction.overhead_bytes
    used = fixed + prediction.output_layer_bytes
    if used > budget_bytes:
        return 0
    count = 1
    for size in reversed(prediction.layer_bytes):
        if used + size > budget_bytes:
            break
        used += size
        count += 1
    return min(count, prediction.n_layers_total)


# --------------------------------------------------------------------------- after loading


def prediction_error_pct(predicted_bytes: int | None, measured_bytes: int | None) -> float | None:
    """(predicted - measured) / measured in per cent; positive: the prediction was too high."""
    if not predicted_bytes or not measured_bytes:
        return None
    return 100.0 * (predicted_bytes - measured_bytes) / measured_bytes


def detect_spill(predicted_bytes: int | None, measured_bytes: int | None, n_layers_offloaded: int | None,
                 n_layers_total: int | None, *, n_layers_requested: int | None = None) -> str | None:
    """Why a loaded configuration is not (all) on the GPU, or None when nothing points to it.

    Two signs: llama.cpp offloaded fewer layers than asked (`n_layers_requested`, default all), or
    the GPU memory measured for the process is far (SPILL_SHORTFALL_FRACTION) below the prediction,
    i.e. weights or KV cache live in host memory. Missing figures are not evidence either way.
    """
    if n_layers_offloaded is not None and n_layers_total:
        wanted = n_layers_total if n_layers_requested is None or n_layers_requested < 0 \
            else min(n_layers_requested, n_layers_total)
        if n_layers_offloaded < wanted:
            return f"only {n_layers_offloaded}/{n_layers_total} layers on the GPU (asked for {wanted})"
    if predicted_bytes and measured_bytes is not None and measured_bytes < predicted_bytes * (1 - SPILL_SHORTFALL_FRACTION):
        short = 100.0 * (1 - measured_bytes / predicted_bytes)
        return (f"GPU memory {measured_bytes / GIB:.2f} GiB is {short:.0f}% below the predicted "
                f"{predicted_bytes / GIB:.2f} GiB: weights or KV cache may be in host memory")
    return None


_BUFFER_LINE = re.compile(r"(\S+)\s+(model|KV|compute|output|RS)\s+buffer size\s*=\s*([\d.]+)\s*MiB")


def buffer_sizes_from_log(lines: Iterable[str]) -> dict[str, dict[str, int]]:
    """llama.cpp's own buffer sizes from its log: {"model": {"CUDA0": bytes, ...}, "KV": ..., ...}.

    Later lines for the same buffer replace earlier ones (a context created twice reports twice).
    """
    sizes: dict[str, dict[str, int]] = {}
    for line in lines:
        m = _BUFFER_LINE.search(line)
        if m:
            device, kind, mib = m.group(1), m.group(2), float(m.group(3))
            sizes.setdefault(kind, {})[device] = int(round(mib * MIB))
    return sizes


def is_host_buffer(device: str) -> bool:
    return device.upper().startswith("CPU") or device.endswith("_Host")


def device_buffer_bytes(sizes: dict[str, dict[str, int]], kind: str) -> int:
    """The bytes llama.cpp says it put in device (non-host) buffers of one kind."""
    return sum(b for d, b in sizes.get(kind, {}).items() if not is_host_buffer(d))


@dataclass
class GpuMemory:
    """NVML's view of one GPU's memory at one moment."""

    free_bytes: int | None = None
    used_bytes: int | None = None
    total_bytes: int | None = None
    process_bytes: int | None = None  # this process's share; None where NVML cannot tell (containers)
    reason: str | None = None  # why the figures are missing


def gpu_memory(gpu_index: int = 0, pid: int | None = None) -> GpuMemory:
    """Free, used and this process's GPU memory from NVML (None fields, with a reason, without it)."""
    from hwprobe.nvml import NvmlSession

    pid = os.getpid() if pid is None else pid
    with NvmlSession() as session:
        if not session.available:
            return GpuMemory(reason=session.error)
        nv = session.pynvml
        try:
            handle = session.handle(gpu_index)
        except Exception as exc:  # noqa: BLE001
            return GpuMemory(reason=f"NVML could not open GPU {gpu_index}: {' '.join(str(exc).split())}")
        info = session.call(nv.nvmlDeviceGetMemoryInfo, handle)
        result = GpuMemory()
        if info is not None:
            result.free_bytes, result.used_bytes, result.total_bytes = int(info.free), int(info.used), int(info.total)
        procs = session.call(nv.nvmlDeviceGetComputeRunningProcesses, handle) or []
        for proc in procs:
            if proc.pid == pid and proc.usedGpuMemory is not None:
                result.process_bytes = int(proc.usedGpuMemory)
        return result


@dataclass
class VramCheck:
    """Prediction against measurement for one loaded configuration: what ConfigRecord.extra keeps."""

    predicted_bytes: int
    measured_bytes: int | None
    measured_source: str | None  # "process" (NVML per process) | "device_delta" (used after - before)
    error_pct: float | None
    spill: str | None
    llama_buffers: dict[str, int] = field(default_factory=dict)  # device bytes by kind, from llama.cpp's log

    def extra(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "vram_predicted_bytes": self.predicted_bytes,
            "vram_measured_bytes": self.measured_bytes,
            "vram_measured_source": self.measured_source,
            "vram_prediction_error_pct": self.error_pct,
        }
        if self.llama_buffers:
            data["vram_llama_buffers_bytes"] = self.llama_buffers
        if self.spill:
            data["spill"] = self.spill
        return data


def measured_process_bytes(before: GpuMemory | None, after: GpuMemory) -> tuple[int | None, str | None]:
    """This process's GPU memory: NVML's per-process figure, else the rise in device-wide use."""
    if after.process_bytes is not None:
        return after.process_bytes, "process"
    if before is not None and before.used_bytes is not None and after.used_bytes is not None:
        return max(0, after.used_bytes - before.used_bytes), "device_delta"
    return None, None


def vram_check(prediction: VramPrediction, before: GpuMemory | None, after: GpuMemory,
               n_layers_offloaded: int | None, n_layers_total: int | None, n_layers_requested: int | None,
               log_lines: Iterable[str] = ()) -> VramCheck:
    measured, source = measured_process_bytes(before, after)
    sizes = buffer_sizes_from_log(log_lines)
    buffers = {kind: device_buffer_bytes(sizes, kind) for kind in sizes}
    return VramCheck(
        predicted_bytes=prediction.total_bytes,
        measured_bytes=measured,
        measured_source=source,
        error_pct=prediction_error_pct(prediction.total_bytes, measured),
        spill=detect_spill(prediction.total_bytes, measured, n_layers_offloaded, n_layers_total,
                           n_layers_requested=n_layers_requested),
        llama_buffers={k: v for k, v in buffers.items() if v},
    )


def describe(prediction: VramPrediction) -> str:
    """One line: the prediction by part."""
    return (f"{_gib(prediction.total_bytes)} = weights {_gib(prediction.weights_bytes)} + KV "
            f"{_gib(prediction.kv_bytes)} + compute {_gib(prediction.compute_bytes)} + overhead "
            f"{_gib(prediction.overhead_bytes)} ({prediction.n_gpu_layers}/{prediction.n_layers_total} layers, "
            f"n_ctx {prediction.n_ctx}, KV {prediction.kv_type})")



# --------------------------------------------------------------------------- the engine's guard


class VramGuard:
    """The checks around one GPU load, for the engine's worker (and anything that loads a model).

    1. `before_load(n_gpu_layers, n_ctx_guess)`: predict with a first guess of the context and
       compare with NVML's free memory: refuse (VramError, one line) or, with allow_partial, return
       fewer layers. Free memory is read here, before anything of ours is on the GPU.
    2. `before_context(n_gpu_layers, n_ctx)`: the same with the real context size; a different layer
       count means "reload with this many" (allow_partial), a refusal raises.
    3. `after_load(...)`: the prediction against the measured memory, spill flag included, as the
       ConfigRecord.extra keys (`vram_predicted_bytes`, `vram_prediction_error_pct`, `spill`, ...).
    Without NVML nothing is refused (free memory unknown) and the measurement is None.
    """

    def __init__(self, model_path: str | Path, gpu_index: int = 0, allow_partial: bool = False, *,
                 flash_attn: bool = True, kv_type: str = "f16", n_ubatch: int = DEFAULT_N_UBATCH,
                 note=None):
        self.model_path = model_path
        self.gpu_index = gpu_index
        self.allow_partial = allow_partial
        self.flash_attn = flash_attn
        self.kv_type = kv_type
        self.n_ubatch = n_ubatch
        self._note = note or (lambda message: None)
        self.geometry = geometry_from_gguf(model_path)
        self.before: GpuMemory | None = None
        self.prediction: VramPrediction | None = None
        self.decision: FitDecision | None = None
        self.requested_layers: int | None = None
        self.partial_note: str | None = None  # why fewer layers than asked went to the GPU

    def _decide(self, n_gpu_layers: int, n_ctx: int) -> int:
        self.prediction = predict_vram(self.geometry, n_ctx, self.kv_type, n_gpu_layers, flash_attn=self.flash_attn,
                                       n_ubatch=self.n_ubatch)
        free = self.before.free_bytes if self.before is not None else None
        self.decision = check_fit(self.prediction, free, self.allow_partial)
        if not self.decision.proceed:
            raise VramError(self.decision.message)
        if self.decision.partial:
            self._note(self.decision.message)
            self.partial_note = self.decision.message
            self.prediction = predict_vram(self.geometry, n_ctx, self.kv_type, self.decision.n_gpu_layers,
                                           flash_attn=self.flash_attn, n_ubatch=self.n_ubatch)
        return self.decision.n_gpu_layers

    def before_load(self, n_gpu_layers: int, n_ctx_guess: int) -> int:
        self.requested_layers = n_gpu_layers
        self.before = gpu_memory(self.gpu_index)
        return self._decide(n_gpu_layers, n_ctx_guess)

    def before_context(self, n_gpu_layers: int, n_ctx: int) -> int:
        return self._decide(n_gpu_layers, n_ctx)

    def after_load(self, n_layers_offloaded: int | None, n_layers_total: int | None,
                   log_lines: Iterable[str] = ()) -> dict[str, Any]:
        if self.prediction is None:
            return {}
        after = gpu_memory(self.gpu_index)
        check = vram_check(self.prediction, self.before, after, n_layers_offloaded, n_layers_total,
                           self.prediction.n_gpu_layers, log_lines)
        extra = check.extra()
        extra["vram_prediction"] = {k: v for k, v in self.prediction.to_dict().items() if k != "layer_bytes"}
        if self.partial_note:
            extra["partial_offload"] = self.partial_note
        return extra


# --------------------------------------------------------------------------- bench models --fit


def local_gguf_path(entry) -> Path | None:
    """The entry's first GGUF part if it is on disk (no download, no checksum: shapes only)."""
    try:
        if entry.source == "local":
            path = Path(entry.path)
        elif entry.source == "package":
            import importlib.util

            spec = importlib.util.find_spec(entry.package.replace("-", "_"))  # never imported
            if spec is None or not spec.submodule_search_locations:
                return None
            root = Path(next(iter(spec.submodule_search_locations)))
            path = next((p for p in (root.parent / entry.package_file, root / entry.package_file) if p.is_file()),
                        root / entry.package_file)
        else:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(entry.hf_repo, entry.hf_files[0], revision=entry.hf_revision or "main")
            if not isinstance(found, str):
                return None
            path = Path(found)
        return path if path.is_file() else None
    except Exception:  # noqa: BLE001 - a broken cache entry means "predict from the manifest"
        return None


@dataclass(frozen=True)
class FitRow:
    entry_id: str
    prediction: VramPrediction | None
    source: str  # "file" | "manifest" | why there is no prediction
    decision: FitDecision | None


def fit_rows(entries: Sequence, n_ctx: int, kv_type: str = "f16", free_bytes: int | None = None,
             flash_attn: bool = True) -> list[FitRow]:
    """For each manifest entry: the predicted VRAM (from its file when on disk, else its manifest
    shape and size) and whether it fits in `free_bytes` (None: not decided)."""
    rows = []
    for entry in entries:
        path = local_gguf_path(entry)
        try:
            prediction = predict_vram(path if path is not None else entry, n_ctx, kv_type, flash_attn=flash_attn)
            source = "file" if path is not None else "manifest"
        except VramError as exc:
            rows.append(FitRow(entry.id, None, str(exc), None))
            continue
        decision = check_fit(prediction, free_bytes, allow_partial=True) if free_bytes is not None else None
        rows.append(FitRow(entry.id, prediction, source, decision))
    return rows
