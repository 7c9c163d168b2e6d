"""How far a quantization moves a model's next-token distribution: KL divergence, top-token agreement
and perplexity, computed the way llama-perplexity --kl-divergence does.

Chunking (as llama-perplexity): the reference text is tokenized once (no BOS), cut into
`len // n_ctx` whole chunks of n_ctx tokens (a partial last chunk is dropped); each chunk is
evaluated from an empty KV cache, its first token replaced by BOS where the model adds one, and only
the second half is scored: the logits at positions n_ctx/2 … n_ctx-2 predict tokens n_ctx/2+1 …
n_ctx-1, so every scored token has at least n_ctx/2 tokens of context. Both models see exactly the
same token ids (files with different vocabularies are refused).

Per scored position, with P = softmax of the reference (`--against`) logits and Q = softmax of the
quantized model's, in float64:
- KLD = sum_v P(v) (log P(v) - log Q(v)), i.e. KL(P_ref || P_quant), in nats;
- same top = argmax P == argmax Q;
- NLL of the true next token under each model; PPL = exp(mean NLL).
Reported: KLD mean with its standard error sqrt(var / (n - 1)) (llama-perplexity's formula), median,
p90, p99, max; the same-top share with sqrt(p (1 - p) / (n - 1)); both perplexities and
ln(PPL_q / PPL_ref) with its standard error (covariance included, as llama-perplexity does).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from bench.errors import BenchError

REFERENCE_TEXT = Path(__file__).resolve().parent / "data" / "quant_damage_reference.txt"
DEFAULT_N_CTX = 512
ROW_BLOCK = 64  # rows converted to float64 at a time: bounded memory for 262k-entry vocabularies


class QuantDamageError(BenchError):
    """The two files cannot be compared (different vocabularies, text too short, load failure)."""


# --------------------------------------------------------------------------- the arithmetic


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (max subtracted first, so large logits do not overflow)."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass
class TokenStats:
    """Per scored position: the numbers every summary is built from."""

    kld: np.ndarray  # KL(P_ref || P_quant), nats
    nll_ref: np.ndarray  # -log P_ref(true next token)
    nll_quant: np.ndarray
    same_top: np.ndarray  # bool

    @classmethod
    def empty(cls) -> "TokenStats":
        return cls(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool))

    def extend(self, other: "TokenStats") -> "TokenStats":
        return TokenStats(np.concatenate([self.kld, other.kld]), np.concatenate([self.nll_ref, other.nll_ref]),
                          np.concatenate([self.nll_quant, other.nll_quant]),
                          np.concatenate([self.same_top, other.same_top]))


def token_stats(ref_logits: np.ndarray, quant_logits: np.ndarray, targets: Sequence[int]) -> TokenStats:
    """Per-row statistics of two logit matrices (rows = positions) against the true next tokens."""
    ref_logits = np.asarray(ref_logits)
    quant_logits = np.asarray(quant_logits)
    targets = np.asarray(targets, dtype=np.int64)
    if ref_logits.shape != quant_logits.shape:
        raise QuantDamageError(f"logit shapes differ: {ref_logits.shape} vs {quant_logits.shape}")
    if ref_logits.shape[0] != targets.shape[0]:
        raise QuantDamageError(f"{ref_logits.shape[0]} logit rows for {targets.shape[0]} target tokens")
    out = TokenStats.empty()
    for start in range(0, ref_logits.shape[0], ROW_BLOCK):
        stop = start + ROW_BLOCK
        lp = log_softmax(ref_logits[start:stop])
        lq = log_softmax(quant_logits[start:stop])
        p = np.exp(lp)
        kld = (p * (lp - lq)).sum(axis=-1)
        rows = np.arange(lp.shape[0])
        t = targets[start:stop]
        out = out.extend(TokenStats(
            kld=np.maximum(kld, 0.0),  # exact KLD is >= 0; rounding can leave -1e-17
            nll_ref=-lp[rows, t], nll_quant=-lq[rows, t],
            same_top=lp.argmax(axis=-1) == lq.argmax(axis=-1),
        ))
    return out


def sem(values: np.ndarray) -> float | None:
    """Standard error of the mean: sqrt((E[x^2] - E[x]^2) / (n - 1)), as llama-perplexity."""
    n = len(values)
    if n < 2:
        return None
    var = float(np.mean(np.square(values)) - np.mean(values) ** 2)
    return float(np.sqrt(max(var, 0.0) / (n - 1)))


def summarize(stats: TokenStats) -> dict[str, Any]:
    n = int(len(stats.kld))
    if n == 0:
        raise QuantDamageError("no position was scored")
    kld = stats.kld
    share = float(np.mean(stats.same_top))
    mean_ref, mean_q = float(np.mean(stats.nll_ref)), float(np.mean(stats.nll_quant))
    sem_ref, sem_q = sem(stats.nll_ref), sem(stats.nll_quant)
    ratio_sem = None
    if n >= 2:
        cov = float(np.mean(stats.nll_ref * stats.nll_quant) - mean_ref * mean_q) / (n - 1)
        ratio_sem = float(np.sqrt(max((sem_ref or 0) ** 2 + (sem_q or 0) ** 2 - 2 * cov, 0.0)))
    return {
        "n_tokens": n,
        "kld": {
            "mean": float(np.mean(kld)), "sem": sem(kld), "median": float(np.percentile(kld, 50)),
            "p90": float(np.percentile(kld, 90)), "p99": float(np.percentile(kld, 99)),
            "max": float(np.max(kld)), "min": float(np.min(kld)),
        },
        "same_top": {"share": share, "sem": float(np.sqrt(share * (1 - share) / (n - 1))) if n > 1 else None},
        "ppl": {
            "reference": float(np.exp(mean_ref)), "reference_sem": float(np.exp(mean_ref) * sem_ref) if sem_ref is not None else None,
            "quant": float(np.exp(mean_q)), "quant_sem": float(np.exp(mean_q) * sem_q) if sem_q is not None else None,
            "ln_ratio": mean_q - mean_ref, "ln_ratio_sem": ratio_sem,
        },
    }


# --------------------------------------------------------------------------- chunks


@dataclass(frozen=True)
class ChunkPlan:
    n_ctx: int
    n_chunks: int
    first: int  # first scored logit row in each chunk (n_ctx // 2)

    @property
    def scored_per_chunk(self) -> int:
        return self.n_ctx - 1 - self.first


def plan_chunks(n_tokens: int, n_ctx: int, max_chunks: int | None = None) -> ChunkPlan:
    if n_ctx < 8:
        raise QuantDamageError(f"--n-ctx must be at least 8, got {n_ctx}")
    n_chunks = n_tokens // n_ctx
    if max_chunks is not None:
        n_chunks = min(n_chunks, max_chunks)
    if n_chunks < 1:
        raise QuantDamageError(
            f"the reference text has {n_tokens} tokens, fewer than one chunk of --n-ctx {n_ctx}; use a smaller "
            "--n-ctx or a longer text"
        )
    return ChunkPlan(n_ctx, n_chunks, n_ctx // 2)


def chunk_tokens(tokens: Sequence[int], plan: ChunkPlan, index: int, bos_id: int | None) -> list[int]:
    """The index-th chunk's tokens, its first replaced by BOS where the model adds one."""
    chunk = list(tokens[index * plan.n_ctx:(index + 1) * plan.n_ctx])
    if bos_id is not None:
        chunk[0] = bos_id
    return chunk


# --------------------------------------------------------------------------- models


@dataclass
class ModelSide:
    """One of the two files: where it is and what it is called."""

    label: str  # manifest id, or the file's name
    path: Path
    sha256: str | None = None


def vocabulary_of(path: Path) -> tuple[str, list[str]]:
    """(tokenizer model, token strings) from the GGUF metadata, without loading weights."""
    from bench.vram import VramError, read_gguf_header

    try:
        header = read_gguf_header(path, keep_arrays=["tokenizer.ggml.tokens"])
    except VramError as exc:
        raise QuantDamageError(str(exc)) from None
    tokens = header.fields.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list):
        raise QuantDamageError(f"{path}: the GGUF has no tokenizer.ggml.tokens; cannot compare vocabularies")
    return str(header.fields.get("tokenizer.ggml.model", "")), tokens


def check_same_vocabulary(ref: ModelSide, quant: ModelSide) -> int:
    """Refuse two files whose tokenizers differ (their distributions would not be comparable)."""
    ref_model, ref_tokens = vocabulary_of(ref.path)
    q_model, q_tokens = vocabulary_of(quant.path)
    if ref_model != q_model:
        raise QuantDamageError(
            f"{quant.label} and {ref.label} use different tokenizers ({q_model} vs {ref_model}); "
            "KL divergence needs two quantizations of one model"
        )
    if len(ref_tokens) != len(q_tokens):
        raise QuantDamageError(
            f"{quant.label} has {len(q_tokens)} tokens, {ref.label} has {len(ref_tokens)}: different vocabularies; "
            "KL divergence needs two quantizations of one model"
        )
    for index, (a, b) in enumerate(zip(ref_tokens, q_tokens)):
        if a != b:
            raise QuantDamageError(
                f"{quant.label} and {ref.label} have different vocabularies (token {index}: {b!r} vs {a!r}); "
                "KL divergence needs two quantizations of one model"
            )
    return len(ref_tokens)


class LogitSource:
    """A model loaded with llama-cpp-python for logits of every position (logits_all=True)."""

    def __init__(self, side: ModelSide, n_ctx: int, n_gpu_layers: int, n_threads: int, flash_attn: bool):
        import llama_cpp

        self.side = side
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(side.path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=min(512, n_ctx), logits_all=True,
                n_gpu_layers=n_gpu_layers, n_threads=n_threads, n_threads_batch=n_threads,
                flash_attn=flash_attn, verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise QuantDamageError(f"{side.label}: llama.cpp could not load {side.path} ({exc})") from None
        self.n_vocab = int(self.llm.n_vocab())
        self.add_bos = bool(self.llm._model.add_bos_token())  # noqa: SLF001 - the vocab's own flag
        self.bos_id = int(self.llm.token_bos())

    def tokenize(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def chunk_logits(self, tokens: list[int], first: int) -> np.ndarray:
        """Logits of rows first … len-2 after evaluating `tokens` from an empty cache."""
        self.llm.reset()  # n_tokens = 0: eval() then drops every cached position before decoding
        self.llm.eval(tokens)
        return np.array(self.llm.scores[first:len(tokens) - 1], dtype=np.float32, copy=True)

    def close(self) -> None:
        try:
            self.llm.close()
        except Exception:  # noqa: BLE001 - closing must not hide the result
            pass


@dataclass
class QuantDamageResult:
    quant_id: str
    reference_id: str
    quant_path: str
    reference_path: str
    n_ctx: int
    n_chunks: int
    n_tokens: int  # scored positions
    kld: dict[str, Any]
    same_top: dict[str, Any]
    ppl: dict[str, Any]
    text: dict[str, Any]  # path, sha256, n_tokens of the reference text
    settings: dict[str, Any]  # n_gpu_layers, n_threads, flash_attn, add_bos
    t_unix: float
    chunking: str = ("chunks of n_ctx tokens from an empty cache, first token BOS where the model adds one, "
                     "second half scored (llama-perplexity --kl-divergence)")
    quant_sha256: str | None = None
    reference_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compute_quant_damage(quant: ModelSide, reference: ModelSide, *, text: str | None = None,
                         text_path: Path | None = None, n_ctx: int = DEFAULT_N_CTX, max_chunks: int | None = None,
                         n_gpu_layers: int = 0, n_threads: int = 1, flash_attn: bool = False,
                         progress: Callable[[str], None] | None = None) -> QuantDamageResult:
    """KL(P_reference || P_quant) and friends over the reference text (see the module docstring)."""
    say = progress or (lambda message: None)
    text_path = text_path or (REFERENCE_TEXT if text is None else None)
    if text is None:
        text = Path(text_path).read_text(encoding="utf-8")
    check_same_vocabulary(reference, quant)
    ref = LogitSource(reference, n_ctx, n_gpu_layers, n_threads, flash_attn)
    try:
        q = LogitSource(quant, n_ctx, n_gpu_layers, n_threads, flash_attn)
        try:
            tokens = ref.tokenize(text)
            if q.tokenize(text) != tokens:
                raise QuantDamageError(
                    f"{quant.label} and {reference.label} tokenize the reference text differently; "
                    "KL divergence needs two quantizations of one model"
                )
            plan = plan_chunks(len(tokens), n_ctx, max_chunks)
            bos = ref.bos_id if ref.add_bos and ref.bos_id >= 0 else None
            stats = TokenStats.empty()
            for index in range(plan.n_chunks):
                chunk = chunk_tokens(tokens, plan, index, bos)
                targets = chunk[plan.first + 1:]
                part = token_stats(ref.chunk_logits(chunk, plan.first), q.chunk_logits(chunk, plan.first), targets)
                stats = stats.extend(part)
                say(f"chunk {index + 1}/{plan.n_chunks}: KLD mean so far {float(np.mean(stats.kld)):.5f} nats "
                    f"(n={len(stats.kld)})")
        finally:
            q.close()
    finally:
        ref.close()
    summary = summarize(stats)
    return QuantDamageResult(
        quant_id=quant.label, reference_id=reference.label, quant_path=str(quant.path),
        reference_path=str(reference.path), n_ctx=n_ctx, n_chunks=plan.n_chunks, n_tokens=summary["n_tokens"],
        kld=summary["kld"], same_top=summary["same_top"], ppl=summary["ppl"],
        text={"path": str(text_path) if text_path else None,
              "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "n_tokens": len(tokens)},
        settings={"n_gpu_layers": n_gpu_layers, "n_threads": n_threads, "flash_attn": flash_attn,
                  "add_bos": bos is not None},
        t_unix=time.time(), quant_sha256=quant.sha256, reference_sha256=reference.sha256,
    )


def store(result: QuantDamageResult, path: Path) -> None:
    """Add (or replace: same pair and n_ctx) a comparison in a quant_damage.json file."""
    import json

    from bench.rundir import write_json_atomic

    data: dict[str, Any] = {"comparisons": []}
    if path.exists():
        try:
            loaded = json.loads(path.read_text())
            if isinstance(loaded, dict) and isinstance(loaded.get("comparisons"), list):
                data = loaded
        except (OSError, json.JSONDecodeError):
            raise QuantDamageError(f"{path}: exists but is not a quant_damage.json; not overwriting it") from None
    key = (result.quant_id, result.reference_id, result.n_ctx)
    data["comparisons"] = [c for c in data["comparisons"]
                           if (c.get("quant_id"), c.get("reference_id"), c.get("n_ctx")) != key]
    data["comparisons"].append(result.to_dict())
    write_json_atomic(path, data)
