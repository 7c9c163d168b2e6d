"""The records a run directory holds: one schema, written by `bench profile`, read by every later stage.

A run directory (`runs/<UTC time>-<host>/`) holds:

- `run.json`         RunMeta: the hardware probe, software versions, options, manifest entries.
- `requests.jsonl`   one RequestRecord per timed request, appended and flushed as each ends.
- `configs.jsonl`    one ConfigRecord per configuration attempt (completed or failed).
- `telemetry.jsonl`  TelemetrySample lines (NVML + psutil), tagged with config id.
- `scores.jsonl`     one ScoreRecord per scored request (written by the scoring stage).
- `log.txt`          the human-readable log, llama.cpp's own log lines included.

Units are in the field names. A figure that could not be measured is None (null), never 0.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1

RUN_META_FILE = "run.json"
REQUESTS_FILE = "requests.jsonl"
CONFIGS_FILE = "configs.jsonl"
TELEMETRY_FILE = "telemetry.jsonl"
SCORES_FILE = "scores.jsonl"
LOG_FILE = "log.txt"


def request_key(config_id: str, rep: int, request_id: str, mode: str) -> str:
    """The identity of one timed request inside a run: what --resume skips and scores join on."""
    return f"{config_id}|{rep}|{request_id}|{mode}"


@dataclass
class RequestRecord:
    """One timed request: what was asked, what came back, and when every token arrived."""

    config_id: str
    rep: int  # 0-based repetition index
    request_id: str  # f"{item_id}/{variant}" from the task suite
    item_id: str
    variant: str  # brief_text | brief_json | mid_text | mid_json | strong_text | strong_json
    level: str  # brief | mid | strong
    format: str  # text | json
    mode: str  # "plain" (prompted only, as the study ran) | "constrained" (JSON-schema grammar)
    twin: bool  # random-weight shape twin: timing only, never quality-scored
    n_prompt_tokens: int
    n_gen_tokens: int
    finish_reason: str  # "stop" (EOS/stop token) | "length" (max_tokens reached)
    output: str
    ttft_ms: float  # request start -> first generated token
    latency_ms: float  # request start -> last generated token
    prefill_tps: float | None  # n_prompt_tokens / ttft
    decode_tps: float | None  # (n_gen - 1) / (t_last - t_first); None when n_gen < 2
    itl_p50_ms: float | None  # inter-token latency percentiles
    itl_p90_ms: float | None
    itl_p99_ms: float | None
    token_times_ms: list[float]  # arrival of every generated token, ms after request start
    seed: int
    temperature: float
    max_tokens: int
    t_start_unix: float
    t_end_unix: float
    energy_j: float | None = None  # GPU energy over the request (NVML counter, or integrated power)
    energy_per_token_j: float | None = None  # energy_j / n_gen_tokens
    power_mean_w: float | None = None
    power_peak_w: float | None = None
    gpu_uuid: str | None = None
    host: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # engine-specific facts (sampler, parallel slot …)

    @property
    def key(self) -> str:
        return request_key(self.config_id, self.rep, self.request_id, self.mode)


@dataclass
class ConfigRecord:
    """One configuration's attempt: how it loaded, where its layers ran, how it ended."""

    config_id: str
    status: str  # "ok" | "failed"
    stage: str  # where it ended: "done" | "fetch" | "load" | "warmup" | "generate" | "child"
    n_requests: int  # requests recorded in this attempt
    model_path: str | None = None
    model_bytes: int | None = None
    sha256: str | None = None
    twin: bool = False
    device: str | None = None  # "gpu" | "cpu": where the layers ran
    n_gpu_layers_requested: int | None = None
    n_layers_offloaded: int | None = None
    n_layers_total: int | None = None
    flash_attn: bool | None = None
    n_ctx: int | None = None
    n_threads: int | None = None
    sampler: str | None = None  # "cpu" | "gpu": where greedy sampling ran
    chat_template: str | None = None  # "gguf" (the file's own) | "fallback:<name>"
    load_time_s: float | None = None
    peak_vram_bytes: int | None = None
    peak_rss_bytes: int | None = None
    gpu_uuid: str | None = None
    exit_code: int | None = None  # the child's exit status on failure
    signal: str | None = None  # e.g. "SIGSEGV" when the child died of a signal
    error: str | None = None  # one line
    last_log_lines: list[str] = field(default_factory=list)
    t_start_unix: float | None = None
    t_end_unix: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TelemetrySample:
    """One sampler tick. NVML fields are None without NVML; psutil fields are always there."""

    t_unix: float
    config_id: str | None
    rss_bytes: int | None
    cpu_pct: float | None
    gpu_index: int | None = None
    power_w: float | None = None
    energy_mj: float | None = None  # NVML's total energy counter since driver load
    mem_used_bytes: int | None = None  # device-wide
    proc_mem_bytes: int | None = None  # this process's share of device memory
    gpu_util_pct: float | None = None
    mem_util_pct: float | None = None
    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    temp_c: float | None = None
    throttle_reasons: list[str] | None = None


@dataclass
class ScoreRecord:
    """The scoring stage's verdict on one request: metric name -> value (None = not computed)."""

    key: str  # request_key(...) of the scored request
    config_id: str
    request_id: str
    item_id: str
    variant: str
    mode: str
    rep: int
    metrics: dict[str, Any]


def to_dict(record) -> dict[str, Any]:
    return dataclasses.asdict(record)


class RecordError(ValueError):
    """A JSON object that lacks fields its record type requires (a foreign or damaged line)."""


def from_dict(cls, data: dict[str, Any]):
    """Build a record from a JSON object, ignoring fields this version does not know."""
    fields = dataclasses.fields(cls)
    missing = [
        f.name
        for f in fields
        if f.name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise RecordError(f"not a {cls.__name__}: missing {', '.join(missing)}")
    names = {f.name for f in fields}
    return cls(**{k: v for k, v in data.items() if k in names})
