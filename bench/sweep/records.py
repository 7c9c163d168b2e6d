"""What a sweep writes: one SweepRecord per (configuration, KV depth, repetition) in `sweep.jsonl`.

A sweep's run directory is a run directory like `bench profile`'s (run.json, configs.jsonl with one
ConfigRecord per load, telemetry.jsonl, log.txt) plus `sweep.jsonl`. A load that fails (a KV type
llama.cpp refuses without flash attention, too little GPU memory) writes one failed SweepRecord per
depth it would have measured, so the table shows the hole and says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench import records
from bench.rundir import RunDir, read_jsonl

SWEEP_FILE = "sweep.jsonl"


def sweep_key(config_id: str, depth: int, rep: int) -> str:
    return f"{config_id}|d{depth}|{rep}"


@dataclass
class SweepRecord:
    """One measurement: prefill and decode rates of one configuration at one KV depth."""

    config_id: str
    model_id: str
    settings: dict[str, Any]  # flash_attn, kv_type, n_batch, n_ubatch, n_threads, n_gpu_layers (as asked)
    depth: int  # tokens already in the KV cache before the timed prefill and before the timed decode
    n_prompt: int  # timed prefill tokens
    n_gen: int  # timed generated tokens
    prefill_tps: float | None  # n_prompt / (prefill + first sample), after `depth` cached tokens
    decode_tps: float | None  # (n_gen - 1) / (last token - first token), after `depth` cached tokens
    rep: int
    t_unix: float
    status: str = "ok"  # "ok" | "failed"
    error: str | None = None  # one line, when failed
    stage: str | None = None  # where a failure happened: "fit" | "load" | "context" | "measure" | "child"
    prefill_ms: float | None = None
    decode_ms: float | None = None
    kv_tokens_before_prefill: int | None = None  # llama_memory_seq_pos_max + 1, read just before
    kv_tokens_before_decode: int | None = None
    flash_attn_effective: bool | None = None  # what llama.cpp used (auto resolves to on or off)
    n_layers_offloaded: int | None = None
    n_layers_total: int | None = None
    n_ctx: int | None = None
    seed: int | None = None
    gpu_uuid: str | None = None
    gpu_name: str | None = None
    device: str | None = None  # "gpu" | "cpu" | "mixed"
    decode_power_mean_w: float | None = None
    decode_energy_per_token_j: float | None = None
    prefill_energy_j: float | None = None
    vram_predicted_bytes: int | None = None
    vram_measured_bytes: int | None = None
    spill: str | None = None
    host: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return sweep_key(self.config_id, self.depth, self.rep)


def read_sweep(run: RunDir | str) -> list[SweepRecord]:
    run = run if isinstance(run, RunDir) else RunDir(run)
    return [records.from_dict(SweepRecord, row) for row in read_jsonl(run.file(SWEEP_FILE)).rows]


def done_keys(run: RunDir) -> set[str]:
    """Measurements already recorded successfully: what --resume skips."""
    return {r.key for r in read_sweep(run) if r.status == "ok"}
