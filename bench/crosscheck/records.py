"""What `bench crosscheck` writes into a run directory, and how later stages read it back.

`RUN_DIR/crosscheck/` holds, per server label (e.g. `ollama`, `openai`):

- `<label>.jsonl`      one CrosscheckRecord per request sent to the server, appended durably as each ends.
- `<label>.meta.json`  the server (URL, kind, version), the matched options, and each configuration's outcome.
- `report.md`          the comparison table (rewritten after every cross-check).

A record pairs with the in-process RequestRecord of the same `key` (config, rep, request, mode).
Units are in the field names; durations the server reports keep its nanoseconds (`_ns`), client-side
times are milliseconds (`_ms`). A figure that was not measured is None, never 0.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import records
from bench.rundir import read_jsonl

CROSSCHECK_DIR = "crosscheck"
REPORT_FILE = "report.md"

# Flags: why a request's server figures must not be read at face value.
FLAG_PROMPT_CACHED = "prompt_cached"  # the server evaluated fewer prompt tokens than the prompt has
FLAG_EVAL_NEAR_ZERO = "eval_duration_near_zero"  # no usable decode time: server TPS left out
FLAG_MODEL_RELOADED = "model_reloaded"  # the server (re)loaded the model inside a timed request
FLAG_PROMPT_TOKENS_DIFFER = "prompt_tokens_differ"  # the server's prompt had more/other tokens than ours
FLAGS = (FLAG_PROMPT_CACHED, FLAG_EVAL_NEAR_ZERO, FLAG_MODEL_RELOADED, FLAG_PROMPT_TOKENS_DIFFER)

# Below 1 ms of decode time a TPS figure is noise (or a server that reported 0): never printed.
EVAL_DURATION_FLOOR_NS = 1_000_000
# A loaded model answers Ollama's scheduler in a few ms; a real (re)load takes far longer.
RELOAD_THRESHOLD_NS = 50_000_000
# One token of slack: a BOS the server keeps cached between requests is not a reused prompt.
PROMPT_CACHE_TOLERANCE_TOKENS = 1

_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class CrosscheckRecord:
    """One request as a server answered it, beside the in-process request it repeats."""

    server_kind: str  # "ollama" | "openai"
    server_label: str
    key: str  # records.request_key(...) of the in-process request
    config_id: str
    rep: int
    request_id: str
    item_id: str
    variant: str
    mode: str  # "plain" | "constrained"
    server_model: str  # the model name the server was asked for
    prompt_source: str  # "run" (the exact string the engine rendered) | "re-rendered" (older runs)
    n_prompt_tokens_ours: int | None
    max_tokens: int
    seed: int
    temperature: float
    num_ctx: int | None  # sent explicitly to Ollama; None where the server does not take it per request
    output: str = ""
    finish_reason: str | None = None  # "stop" | "length" as the server said
    error: str | None = None  # one line when the request failed (timeout, server error)
    # client side, measured here: request sent -> first chunk with text / -> final chunk
    ttft_ms: float | None = None
    latency_ms: float | None = None
    last_content_ms: float | None = None  # request sent -> last chunk with text
    n_content_chunks: int = 0
    n_gen_tokens: int | None = None  # the server's count (eval_count / usage), else inferred (see source)
    n_gen_tokens_source: str | None = None  # "server" | "matched-output" (same text as ours: our count)
    client_decode_tps: float | None = None  # (n_gen_tokens - 1) / (last - first content chunk)
    # the server's own figures (Ollama: as sent; llama-server `timings`: ms converted to ns)
    total_duration_ns: int | None = None
    load_duration_ns: int | None = None
    prompt_eval_count: int | None = None  # prompt tokens the server evaluated (cached ones excluded)
    prompt_eval_duration_ns: int | None = None
    eval_count: int | None = None
    eval_duration_ns: int | None = None
    usage_prompt_tokens: int | None = None  # OpenAI `usage`: the prompt's tokens, cached or not
    usage_completion_tokens: int | None = None
    server_tps: float | None = None  # eval_count / eval_duration; None when eval_duration is near zero
    flags: list[str] = field(default_factory=list)
    t_start_unix: float | None = None
    t_end_unix: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # raw server timing objects, ids

    @property
    def ok(self) -> bool:
        return self.error is None


def compute_flags(rec: CrosscheckRecord) -> list[str]:
    """The flags a finished record earns; also sets server_tps (None when it would be absurd)."""
    flags: list[str] = []
    ours = rec.n_prompt_tokens_ours
    if rec.prompt_eval_count is not None and ours is not None:
        if rec.prompt_eval_count == 0 or rec.prompt_eval_count < ours - PROMPT_CACHE_TOLERANCE_TOKENS:
            flags.append(FLAG_PROMPT_CACHED)
    if rec.eval_count is not None or rec.eval_duration_ns is not None:
        if rec.eval_duration_ns is None or rec.eval_duration_ns < EVAL_DURATION_FLOOR_NS:
            flags.append(FLAG_EVAL_NEAR_ZERO)
            rec.server_tps = None
        elif rec.eval_count:
            rec.server_tps = rec.eval_count / (rec.eval_duration_ns / 1e9)
    if rec.load_duration_ns is not None and rec.load_duration_ns >= RELOAD_THRESHOLD_NS:
        flags.append(FLAG_MODEL_RELOADED)
    if ours is not None:
        total = rec.usage_prompt_tokens
        if total is None and rec.server_kind == "ollama":
            total = rec.prompt_eval_count  # Ollama gives no total; more evaluated than ours is a mismatch
            if total is not None and total <= ours:
                total = None
        if total is not None and total != ours:
            flags.append(FLAG_PROMPT_TOKENS_DIFFER)
    rec.flags = flags
    return flags


def check_label(label: str) -> str:
    from bench.errors import BenchError

    if not _LABEL_RE.match(label):
        raise BenchError(
            f"--label {label!r}: use letters, digits, '.', '_' or '-' (it names the file crosscheck/<label>.jsonl)"
        )
    return label


def crosscheck_dir(run_path: str | Path) -> Path:
    return Path(run_path) / CROSSCHECK_DIR


def records_path(run_path: str | Path, label: str) -> Path:
    return crosscheck_dir(run_path) / f"{label}.jsonl"


def meta_path(run_path: str | Path, label: str) -> Path:
    return crosscheck_dir(run_path) / f"{label}.meta.json"


@dataclass
class CrosscheckSet:
    """One server's cross-check of a run, as read back from disk."""

    label: str
    meta: dict[str, Any]
    records: list[CrosscheckRecord]
    bad_lines: list[int] = field(default_factory=list)


def read_crosschecks(run_path: str | Path) -> list[CrosscheckSet]:
    """Every cross-check in a run directory, by label (empty when none was run)."""
    folder = crosscheck_dir(run_path)
    if not folder.is_dir():
        return []
    sets = []
    for path in sorted(folder.glob("*.jsonl")):
        label = path.name[: -len(".jsonl")]
        meta_file = meta_path(run_path, label)
        try:
            meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        except (OSError, json.JSONDecodeError):
            meta = {}
        read = read_jsonl(path)
        recs, bad = [], list(read.bad_lines)
        for index, row in enumerate(read.rows, start=1):
            try:
                recs.append(records.from_dict(CrosscheckRecord, row))
            except records.RecordError:
                bad.append(index)  # a foreign object in crosscheck/: skipped and counted, not fatal
        sets.append(CrosscheckSet(label, meta, recs, bad))
    return sets
