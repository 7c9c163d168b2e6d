"""The timed generation loop, on llama.cpp's low-level API through llama_cpp's ctypes bindings.

Why not `Llama.create_chat_completion`: its stream yields text chunks that it holds back while a
stop string might be forming, so chunk arrival is not token arrival; it reuses a matching prompt
prefix from the previous request, so TTFT reads too low; and each token costs a lot of Python.
Here every token costs one sample call, one EOG check (none when EOS is ignored) and one decode
call, each a direct ctypes call, with a `perf_counter_ns` stamp right after sampling (sampling
waits for the device, so the stamp marks the token's real arrival); text is made from the token
ids after the last stamp.

Samplers: `CpuSampler` builds llama.cpp's CPU sampler chain; `GpuSampler` is the same chain run
inside llama.cpp's graph (`llama_set_sampler`, attached with `Engine.attach_gpu_sampler`), so a
step copies back one token id instead of the vocabulary's logits. Throughput mode (several
sequences per batch) is `bench.engine.parallel`.
"""

from __future__ import annotations

import ctypes
import json
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import llama_cpp as _ll

from bench.errors import EngineError

REINSTALL_CUDA = 'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python'

_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_FA_ENABLED = re.compile(r"Flash Attention enabled")
_FA_DISABLED = re.compile(r"Flash Attention not supported, set to disabled")
_FA_PARAM = re.compile(r"flash_attn\s*=\s*(\w+)")

# ggml.h's enum ggml_log_level (llama_cpp/_logger.py's comment has an older order).
GGML_LOG_LEVEL_DEBUG = 1
GGML_LOG_LEVEL_ERROR = 4
GGML_LOG_LEVEL_CONT = 5  # continues the previous message at its level

FLASH_ATTN_TYPES = {"auto": _ll.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": _ll.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                    "off": _ll.LLAMA_FLASH_ATTN_TYPE_DISABLED}


class GenerationError(EngineError):
    """llama.cpp refused a step (decode failure, no KV slot, grammar that does not parse)."""


# --------------------------------------------------------------------------- log routing


_INSTALLED_LOG_CALLBACKS: list = []  # see LlamaLog.install


class LlamaLog:
    """Routes llama.cpp's (and ggml's) log into `sink(line)` and remembers the facts we need.

    The ctypes callback object must outlive every llama.cpp call, so the instance keeps it.
    """

    def __init__(self, sink: Callable[[str], None], keep_lines: int = 200, debug: bool = False):
        self._sink = sink
        self._debug = debug
        self._level = 1
        self._partial = ""
        self.lines: deque[str] = deque(maxlen=keep_lines)
        self.errors: list[str] = []  # ERROR-level lines since mark(); the first is usually the cause
        self.n_layers_offloaded: int | None = None
        self.n_layers_offloadable: int | None = None
        self.flash_attn: bool | None = None
        self._callback = _ll.llama_log_callback(self._on_log)

    def install(self) -> None:
        # llama.cpp keeps the pointer until another callback replaces it, even past this object's
        # life (a second Engine in one process installs its own, then is collected): the thunk
        # must never be freed while C may call it, so every installed one is kept.
        _INSTALLED_LOG_CALLBACKS.append(self._callback)
        _ll.llama_log_set(self._callback, ctypes.c_void_p(0))

    def _on_log(self, level: int, text: bytes, user_data) -> None:  # called from C
        try:
            if level != GGML_LOG_LEVEL_CONT:
                self._level = level
            if self._level == GGML_LOG_LEVEL_DEBUG and not self._debug:
                return  # per-tensor and per-graph chatter: thousands of lines per load
            self._partial += text.decode("utf-8", errors="replace") if text else ""
            while "\n" in self._partial:
                line, self._partial = self._partial.split("\n", 1)
                if line.strip():
                    self._line(line)
        except Exception:  # noqa: BLE001 - an exception must never unwind into C
            pass

    def mark(self) -> None:
        """Start collecting errors afresh (before a load, a context creation)."""
        self.errors = []

    def _line(self, line: str) -> None:
        self.lines.append(line)
        if self._level == GGML_LOG_LEVEL_ERROR:
            self.errors.append(line.strip())
        m = _OFFLOADED.search(line)
        if m:
            self.n_layers_offloaded, self.n_layers_offloadable = int(m.group(1)), int(m.group(2))
        if _FA_ENABLED.search(line):
            self.flash_attn = True
        elif _FA_DISABLED.search(line):
            self.flash_attn = False
        else:
            m = _FA_PARAM.search(line)  # "flash_attn = enabled|disabled|auto" from context init
            if m and m.group(1) in ("enabled", "disabled"):
                self.flash_attn = m.group(1) == "enabled"
        self._sink(line)

    def flush(self) -> None:
        if self._partial.strip():
            self._line(self._partial)
        self._partial = ""


# --------------------------------------------------------------------------- samplers


class Sampler(Protocol):
    name: str

    def chain(self, grammar: str | None) -> int:
        """A fresh llama_sampler chain for one request (freed by the caller)."""
        ...


class CpuSampler:
    """llama.cpp's CPU sampler chain: greedy at temperature 0, else top-k/top-p/temperature/dist."""

    name = "cpu"

    def __init__(self, vocab, temperature: float, seed: int, top_k: int = 40, top_p: float = 0.95):
        self._vocab = vocab
        self.temperature = temperature
        self.seed = seed
        self.top_k = top_k
        self.top_p = top_p

    def chain(self, grammar: str | None):
        params = _ll.llama_sampler_chain_default_params()
        params.no_perf = True
        chain = _ll.llama_sampler_chain_init(params)
        if grammar is not None:
            g = _ll.llama_sampler_init_grammar(self._vocab, grammar.encode("utf-8"), b"root")
            if not g:
                _ll.llama_sampler_free(chain)
                raise GenerationError("llama.cpp could not parse the JSON-schema grammar")
            _ll.llama_sampler_chain_add(chain, g)
        if self.temperature <= 0:
            _ll.llama_sampler_chain_add(chain, _ll.llama_sampler_init_greedy())
        else:
            _ll.llama_sampler_chain_add(chain, _ll.llama_sampler_init_top_k(self.top_k))
            _ll.llama_sampler_chain_add(chain, _ll.llama_sampler_init_top_p(self.top_p, 1))
            _ll.llama_sampler_chain_add(chain, _ll.llama_sampler_init_temp(self.temperature))
            _ll.llama_sampler_chain_add(chain, _ll.llama_sampler_init_dist(self.seed & 0xFFFFFFFF))
        return chain


class GpuSampler(CpuSampler):
    """The same chain run inside llama.cpp's compute graph ("backend sampling", experimental).

    Attached to the context with `llama_set_sampler`, the chain runs on the device that holds the
    output layer right after the logits, so a step copies one token id back instead of the whole
    vocabulary's logits and no CPU pass over them is made. `Engine.attach_gpu_sampler` attaches it
    and says whether llama.cpp took it; grammar-constrained requests cannot run there (the grammar
    is a CPU sampler), so they use `chain(grammar)`, the CPU chain, with the backend chain detached.
    """

    name = "gpu"
    backend = True


def schema_grammar(schema: dict) -> str:
    """GBNF for a JSON schema, via llama-cpp-python's converter (root rule `root`)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return json_schema_to_gbnf(json.dumps(schema))


# --------------------------------------------------------------------------- model and context


@dataclass
class ModelFacts:
    """What loading told us; goes into the ConfigRecord."""

    n_layer: int
    n_layers_offloaded: int
    n_layers_total: int  # llama.cpp counts the output layer too: n_layer + 1
    device: str  # "gpu" | "cpu" | "mixed"
    size_bytes: int
    n_params: int
    n_ctx_train: int
    chat_template: str | None
    bos_token: str
    eos_token: str
    add_bos: bool
    bos_id: int
    desc: str


@dataclass
class Generation:
    """One request's raw result: tokens and when each arrived."""

    token_ids: list[int]
    token_times_ns: list[int]
    t_start_ns: int
    t_done_ns: int
    t_start_unix: float
    text: str
    finish_reason: str  # "stop" | "length"
    n_prompt_tokens: int
    extra: dict = field(default_factory=dict)

    @property
    def t_end_unix(self) -> float:
        return self.t_start_unix + (self.t_done_ns - self.t_start_ns) / 1e9


_backend_ready = False


def supports_gpu_offload() -> bool:
    return bool(_ll.llama_supports_gpu_offload())


class Engine:
    """One model and one context in this process. Not thread-safe; one request at a time."""

    def __init__(self, log: LlamaLog):
        global _backend_ready
        self.log = log
        log.install()
        if not _backend_ready:
            _ll.llama_backend_init()
            _backend_ready = True
        self.model = None
        self.ctx = None
        self.vocab = None
        self.n_ctx = 0
        self.n_batch = 0
        self._one_token = (_ll.llama_token * 1)()
        self._one_batch = None
        self._piece = ctypes.create_string_buffer(256)
        # Backend sampler chains attached to the context, by sequence id. The context holds raw
        # pointers to them, so they are freed only after it is detached or freed.
        self._gpu_chains: dict[int, int] = {}
        self._gpu_sampler: GpuSampler | None = None
        self._gpu_seq_ids: tuple[int, ...] = (0,)
        self._gpu_detached = False  # detached for a grammar request; re-attached on the next plain one

    # -- load ----------------------------------------------------------------------------------

    def load_model(self, path: str, n_gpu_layers: int, *, split_mode: int | None = None,
                   tensor_split: list[float] | None = None) -> ModelFacts:
        """Load the model; `split_mode`/`tensor_split` spread it over several visible GPUs."""
        params = _ll.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers  # -1: every layer (llama.cpp resolves it to n_layer + 1)
        if split_mode is not None:
            params.split_mode = split_mode
        if tensor_split:
            # llama.cpp reads llama_max_devices() floats; kept on self until the model is freed.
            self._tensor_split = (ctypes.c_float * int(_ll.llama_max_devices()))(*tensor_split)
            params.tensor_split = self._tensor_split
        self.log.mark()
        model = _ll.llama_model_load_from_file(path.encode("utf-8"), params)
        self.log.flush()
        if not model:
            reason = _reason(self.log)
            raise EngineError(f"llama.cpp could not load {path}" + (f": {reason}" if reason else ""))
        self.model = model
        self.vocab = _ll.llama_model_get_vocab(model)
        n_layer = int(_ll.llama_model_n_layer(model))
        total = self.log.n_layers_offloadable or n_layer + 1
        offloaded = self.log.n_layers_offloaded if self.log.n_layers_offloaded is not None else 0
        device = "cpu" if offloaded == 0 else ("gpu" if offloaded >= total else "mixed")
        template = _ll.llama_model_chat_template(model, None)
        bos_id = int(_ll.llama_vocab_bos(self.vocab))
        eos_id = int(_ll.llama_vocab_eos(self.vocab))
        desc = ctypes.create_string_buffer(256)
        _ll.llama_model_desc(model, desc, len(desc))
        return ModelFacts(
            n_layer=n_layer,
            n_layers_offloaded=offloaded,
            n_layers_total=total,
            device=device,
            size_bytes=int(_ll.llama_model_size(model)),
            n_params=int(_ll.llama_model_n_params(model)),
            n_ctx_train=int(_ll.llama_model_n_ctx_train(model)),
            chat_template=template.decode("utf-8", errors="replace") if template else None,
            bos_token=self.token_text(bos_id),
            eos_token=self.token_text(eos_id),
            add_bos=bool(_ll.llama_vocab_get_add_bos(self.vocab)),
            bos_id=bos_id,
            desc=desc.value.decode("utf-8", errors="replace"),
        )

    def create_context(self, n_ctx: int, n_threads: int, flash_attn: str = "auto",
                       n_batch: int = 2048, n_seq_max: int = 1, n_ubatch: int = 512,
                       type_k: int | None = None, type_v: int | None = None) -> bool | None:
        """Create the context; returns whether flash attention ended up on (None if unknown).

        n_batch 2048 / n_ubatch 512 are llama-bench's defaults. `n_seq_max` > 1 gives that many
        independent sequences (throughput mode), each with n_ctx / n_seq_max cells. `type_k` /
        `type_v`: the KV cache's GGML_TYPE_* (default f16; bench sweep --kv-type varies them).
        """
        params = _ll.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = min(n_batch, n_ctx)
        params.n_ubatch = min(n_ubatch, params.n_batch)
        params.n_seq_max = n_seq_max
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.flash_attn_type = FLASH_ATTN_TYPES[flash_attn]
        if type_k is not None:
            params.type_k = type_k
        if type_v is not None:
            params.type_v = type_v
        params.no_perf = True
        self.log.flash_attn = None
        self.log.mark()
        ctx = _ll.llama_init_from_model(self.model, params)
        self.log.flush()
        if not ctx:
            reason = _reason(self.log)
            raise EngineError("llama.cpp could not create a context" + (f": {reason}" if reason else ""))
        self.ctx = ctx
        self.n_ctx = int(_ll.llama_n_ctx(ctx))
        self.n_batch = int(_ll.llama_n_batch(ctx))
        self._one_batch = _ll.llama_batch_get_one(self._one_token, 1)
        if flash_attn == "on":
            return True if self.log.flash_attn is None else self.log.flash_attn
        if flash_attn == "off":
            return False
        return self.log.flash_attn

    def free_context(self) -> None:
        """Free the context (and its backend sampler chains), keeping the model for a new one."""
        if self.ctx:
            _ll.llama_free(self.ctx)
            self.ctx = None
        self._free_gpu_chains()
        self._gpu_sampler = None
        self._gpu_detached = False

    def close(self) -> None:
        self.free_context()
        if self.model:
            _ll.llama_model_free(self.model)
            self.model = None

    # -- backend ("GPU") sampling --------------------------------------------------------------

    def attach_gpu_sampler(self, sampler: "GpuSampler", seq_ids: Sequence[int] = (0,)) -> bool:
        """Attach `sampler`'s chain to the context for each sequence; False if llama.cpp refused.

        On refusal (a build or device that cannot run the chain's ops, an old llama.cpp without
        `llama_set_sampler`) nothing stays attached and the caller samples on the CPU.
        """
        set_sampler = getattr(_ll, "llama_set_sampler", None)
        if set_sampler is None or not self.ctx:
            return False
        self._detach_gpu_sampler()
        self._free_gpu_chains()
        for seq in seq_ids:
            chain = sampler.chain(None)
            self.log.mark()
            ok = bool(set_sampler(self.ctx, seq, chain))
            self.log.flush()
            if not ok:
                _ll.llama_sampler_free(chain)
                self._detach_gpu_sampler()
                self._free_gpu_chains()
                return False
            self._gpu_chains[seq] = chain
        self._gpu_sampler = sampler
        self._gpu_seq_ids = tuple(seq_ids)
        self._gpu_detached = False
        self._settle()
        return True

    def gpu_chain(self, seq: int = 0):
        return self._gpu_chains.get(seq)

    def _detach_gpu_sampler(self) -> None:
        if self.ctx and self._gpu_chains:
            for seq in self._gpu_chains:
                _ll.llama_set_sampler(self.ctx, seq, None)

    def _free_gpu_chains(self) -> None:
        for chain in self._gpu_chains.values():
            _ll.llama_sampler_free(chain)
        self._gpu_chains = {}

    def select_gpu_chain(self, wanted: bool) -> bool:
        """Detach the backend chains for grammar requests, or bring them back for plain ones;
        returns whether backend chains are attached now.

        Either change makes llama.cpp rebuild its compute graph on the next decode; `_settle` pays
        for that with an untimed one-token decode, so no timed request carries it.
        """
        if self._gpu_sampler is None:
            return False
        if wanted and self._gpu_detached:
            self.attach_gpu_sampler(self._gpu_sampler, self._gpu_seq_ids)
        elif not wanted and not self._gpu_detached and self._gpu_chains:
            self._detach_gpu_sampler()
            self._free_gpu_chains()  # backend_init runs once per chain: a re-attach needs a new one
            self._gpu_detached = True
            self._settle()
        return bool(self._gpu_chains)

    def _settle(self) -> None:
        """One throw-away decode so graph (re)building happens outside any timed request."""
        self.clear_cache()
        self._one_token[0] = max(int(_ll.llama_vocab_bos(self.vocab)), 0)
        _ll.llama_decode(self.ctx, _ll.llama_batch_get_one(self._one_token, 1))
        _ll.llama_synchronize(self.ctx)
        self.clear_cache()

    # -- tokens --------------------------------------------------------------------------------

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        n = _ll.llama_token_to_piece(self.vocab, token, self._piece, len(self._piece), 0, True)
        return self._piece.raw[: max(n, 0)].decode("utf-8", errors="replace")

    def tokenize(self, text: str, add_bos: bool, bos_id: int) -> list[int]:
        """Tokenize a rendered chat prompt: special tokens parsed, BOS added once if the model wants it.

        Templates usually write BOS themselves; adding it again would double it, so BOS is
        prepended only when the model asks for one and the rendered text did not start with it.
        """
        raw = text.encode("utf-8")
        cap = len(raw) + 8
        buf = (_ll.llama_token * cap)()
        n = _ll.llama_tokenize(self.vocab, raw, len(raw), buf, cap, False, True)
        if n < 0:
            cap = -n
            buf = (_ll.llama_token * cap)()
            n = _ll.llama_tokenize(self.vocab, raw, len(raw), buf, cap, False, True)
        tokens = list(buf[:n])
        if add_bos and bos_id >= 0 and (not tokens or tokens[0] != bos_id):
            tokens.insert(0, bos_id)
        return tokens

    # -- the timed request ---------------------------------------------------------------------

    def clear_cache(self) -> None:
        """Forget every cached position, so each request pays its full prompt (honest TTFT)."""
        _ll.llama_memory_clear(_ll.llama_get_memory(self.ctx), True)

    def generate(self, prompt_tokens: Sequence[int], max_tokens: int, sampler: Sampler,
                 grammar: str | None = None, ignore_eos: bool = False) -> Generation:
        """One timed request. `ignore_eos`: generate exactly max_tokens (twins, calibration).

        With a GpuSampler attached (`attach_gpu_sampler`) and no grammar, the attached chain samples
        inside the graph; its state is reset first, so a seeded request repeats exactly.
        """
        if len(prompt_tokens) + max_tokens > self.n_ctx:
            raise GenerationError(
                f"prompt ({len(prompt_tokens)} tokens) + max_tokens ({max_tokens}) exceeds n_ctx {self.n_ctx}"
            )
        wanted = bool(getattr(sampler, "backend", False)) and grammar is None
        if self.select_gpu_chain(wanted) and wanted and 0 in self._gpu_chains:
            chain = self._gpu_chains[0]
            _ll.llama_sampler_reset(chain)
            self.clear_cache()
            g = self._run(prompt_tokens, max_tokens, chain, ignore_eos)
            g.extra["sampler"] = "gpu"
            return g
        chain = sampler.chain(grammar)
        try:
            self.clear_cache()
            g = self._run(prompt_tokens, max_tokens, chain, ignore_eos)
            g.extra["sampler"] = "cpu"
            return g
        finally:
            _ll.llama_sampler_free(chain)

    def _run(self, prompt_tokens: Sequence[int], max_tokens: int, chain, ignore_eos: bool = False) -> Generation:
        ctx = self.ctx
        # Local names: each attribute lookup in the per-token loop is time not spent decoding.
        # Per token the loop makes one sample call, one EOG check (none with ignore_eos), one
        # clock read, two list appends and one decode; text is made from the ids after the clock
        # stops, so detokenising costs the timed tokens nothing.
        sample = _ll.llama_sampler_sample
        decode = _ll.llama_decode
        is_eog = _ll.llama_vocab_is_eog
        vocab = self.vocab
        now = time.perf_counter_ns
        one_token, one_batch = self._one_token, self._one_batch

        n_prompt = len(prompt_tokens)
        prompt = (_ll.llama_token * n_prompt)(*prompt_tokens)
        token_ids: list[int] = []
        times: list[int] = []
        add_id, add_time = token_ids.append, times.append
        finish = "length"
        last = max_tokens - 1

        t_start_unix = time.time()
        t_start = now()
        for offset in range(0, n_prompt, self.n_batch):
            n = min(self.n_batch, n_prompt - offset)
            chunk = ctypes.cast(ctypes.byref(prompt, offset * ctypes.sizeof(_ll.llama_token)),
                                ctypes.POINTER(_ll.llama_token))
            rc = decode(ctx, _ll.llama_batch_get_one(chunk, n))
            if rc != 0:
                raise GenerationError(f"llama_decode failed on the prompt (code {rc})")
        if ignore_eos:
            for i in range(max_tokens):
                tok = sample(chain, ctx, -1)
                add_time(now())
                add_id(tok)
                if i == last:
                    break
                one_token[0] = tok
                rc = decode(ctx, one_batch)
                if rc:
                    raise GenerationError(f"llama_decode failed at generated token {i + 1} (code {rc})")
        else:
            for i in range(max_tokens):
                tok = sample(chain, ctx, -1)
                t = now()
                if is_eog(vocab, tok):
                    finish = "stop"
                    break
                add_time(t)
                add_id(tok)
                if i == last:
                    break
                one_token[0] = tok
                rc = decode(ctx, one_batch)
                if rc:
                    raise GenerationError(f"llama_decode failed at generated token {i + 1} (code {rc})")
        t_done = now()
        return Generation(
            token_ids=token_ids,
            token_times_ns=times,
            t_start_ns=t_start,
            t_done_ns=t_done,
            t_start_unix=t_start_unix,
            text=self.detokenize(token_ids),
            finish_reason=finish,
            n_prompt_tokens=n_prompt,
        )

    def detokenize(self, token_ids: Sequence[int]) -> str:
        """The text of generated tokens: their pieces (special tokens as empty), joined as bytes
        before decoding so a character split across tokens stays whole."""
        to_piece = _ll.llama_token_to_piece
        vocab, piece = self.vocab, self._piece
        piece_len = len(piece)
        out = bytearray()
        for tok in token_ids:
            n = to_piece(vocab, tok, piece, piece_len, 0, False)
            if n > 0:
                out += piece.raw[:n]
            elif n < 0:
                out += self._long_piece(tok, -n)
        return out.decode("utf-8", errors="replace")

    def _long_piece(self, tok: int, size: int) -> bytes:
        buf = ctypes.create_string_buffer(size)
        n = _ll.llama_token_to_piece(self.vocab, tok, buf, size, 0, False)
        return buf.raw[: max(n, 0)]


def _reason(log: LlamaLog) -> str | None:
    """Why llama.cpp refused: its first error line since the attempt began (the root cause, e.g.
    "this GGUF file is version ... " before the generic "failed to load model"), else its last line."""
    if log.errors:
        return log.errors[0]
    return log.lines[-1].strip() if log.lines else None
