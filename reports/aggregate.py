"""Per-configuration aggregates of one run directory: the numbers every report table prints.

One row per (configuration, mode): timing figures are medians over requests with p10–p90,
quality figures are means over scored requests (as the study averaged them), yes/no metrics
are shares of the requests they were computed for. Twins keep their timing and never get
quality; failed configurations are kept, with where and why they failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench import records
from bench.errors import RunDirError
from bench.rundir import RunDir, read_jsonl
from reports.stats import EMPTY, Share, Summary, share, summarize

GIB = 1024**3

# Request fields summarised as median + p10–p90 (the timing and energy cells).
TIMING_FIELDS = (
    "decode_tps",
    "latency_ms",
    "ttft_ms",
    "prefill_tps",
    "itl_p50_ms",
    "itl_p90_ms",
    "energy_per_token_j",
    "energy_j",
    "power_mean_w",
    "n_gen_tokens",
)

# Score metrics averaged over the requests they were computed for.
MEAN_METRICS = (
    "rouge1",
    "rouge2",
    "rougeL",
    "factual_nli",
    "contradiction_share",
    "fact_coverage",
    "unsupported_numbers",
    "unsupported_number_share",
    "semantic_sim",
    "n_words",
    "repetition",
    "field_completeness",
    "key_accuracy",
)

# Yes/no score metrics, reported as the share of requests where they hold.
SHARE_METRICS = (
    "json_parse_strict",
    "json_parse_lenient",
    "schema_ok",
    "extraneous",
    "length_ok",
    "refusal",
    "language_ok",
)


@dataclass
class ConfigSummary:
    """Everything the report says about one configuration in one mode."""

    config_id: str
    mode: str
    label: str
    twin: bool
    status: str  # "ok" | "failed" | "unknown" (requests but no configs.jsonl line)
    stage: str | None
    tier: str | None
    params_b: float | None
    quant: str | None
    family: str | None
    device: str | None
    flash_attn: bool | None
    n_requests: int
    n_scored: int
    timing: dict[str, Summary]
    quality: dict[str, Summary]
    shares: dict[str, Share]
    peak_vram_gib: float | None
    truncated: Share  # requests that stopped at max_tokens
    temperatures: tuple[float, ...]
    seeds: tuple[int, ...]

    @property
    def scored(self) -> bool:
        return self.n_scored > 0 and not self.twin

    def t(self, name: str) -> Summary:
        return self.timing.get(name, EMPTY)

    def q(self, name: str) -> Summary:
        """A quality mean; empty for twins whatever the score file says."""
        return EMPTY if self.twin else self.quality.get(name, EMPTY)

    def s(self, name: str) -> Share:
        return Share(0, 0) if self.twin else self.shares.get(name, Share(0, 0))

    @property
    def efficiency(self) -> float | None:
        """The study's efficiency score: TPS x ROUGE-L (here median decode TPS x mean ROUGE-L)."""
        tps, rouge = self.t("decode_tps").median, self.q("rougeL").mean
        if tps is None or rouge is None:
            return None
        return tps * rouge


@dataclass
class RunSummary:
    """One run directory, aggregated."""

    path: Path
    meta: dict[str, Any]
    configs: list[ConfigSummary]
    failed: list[records.ConfigRecord]
    not_run: list[str]  # configurations in run.json with neither requests nor a config record
    config_records: dict[str, records.ConfigRecord]
    requests: list[records.RequestRecord]
    scores: dict[str, dict[str, Any]]  # request key -> metrics
    has_scores: bool
    notes: list[str] = field(default_factory=list)

    @property
    def host_label(self) -> str:
        return run_label(self.meta, self.path)

    def frame(self) -> pd.DataFrame:
        """Headline numbers, one row per configuration/mode: what rules and plots read."""
        rows = []
        for c in self.configs:
            rows.append(
                {
                    "label": c.label,
                    "config_id": c.config_id,
                    "mode": c.mode,
                    "twin": c.twin,
                    "status": c.status,
                    "scored": c.scored,
                    "tier": c.tier,
                    "params_b": c.params_b,
                    "quant": c.quant,
                    "family": c.family,
                    "device": c.device,
                    "decode_tps": c.t("decode_tps").median,
                    "latency_ms": c.t("latency_ms").median,
                    "ttft_ms": c.t("ttft_ms").median,
                    "energy_per_token_j": c.t("energy_per_token_j").median,
                    "rougeL": c.q("rougeL").mean,
                    "factual": c.q("factual_nli").mean,
                    "repetition": c.q("repetition").mean,
                    "unsupported_number_share": c.q("unsupported_number_share").mean,
                    "parse_pct": c.s("json_parse_strict").pct,
                    "parse_lenient_pct": c.s("json_parse_lenient").pct,
                    "schema_pct": c.s("schema_ok").pct,
                    "extraneous_pct": c.s("extraneous").pct,
                    "length_ok_pct": c.s("length_ok").pct,
                    "refusal_pct": c.s("refusal").pct,
                    "language_ok_pct": c.s("language_ok").pct,
                    "efficiency": c.efficiency,
                    "truncated_pct": c.truncated.pct,
                    "decode_tps_p10": c.t("decode_tps").p10,
                    "decode_tps_p90": c.t("decode_tps").p90,
                }
            )
        return pd.DataFrame(rows)


def model_entries(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """config id -> manifest entry, from run.json's `configs` list ({config_id, entry}) or `models` map."""
    entries: dict[str, dict[str, Any]] = {}
    models = meta.get("models")
    if isinstance(models, dict):
        entries.update({k: v for k, v in models.items() if isinstance(v, dict)})
    configs = meta.get("configs")
    if isinstance(configs, list):
        for item in configs:
            if isinstance(item, dict) and isinstance(item.get("config_id"), str):
                entry = item.get("entry") if isinstance(item.get("entry"), dict) else {}
                merged = {**entry, **({"twin": True} if item.get("twin") else {})}
                entries.setdefault(item["config_id"], merged)
    return entries


def probe_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The hardware probe: run.json's `hardware` (what bench profile writes) or `probe`."""
    for key in ("hardware", "probe"):
        if isinstance(meta.get(key), dict):
            return meta[key]
    return {}


def run_label(meta: dict[str, Any], path: Path | None = None) -> str:
    """'host · GPU name' from the hardware probe, for telling runs from different machines apart."""
    probe = probe_of(meta)
    host = _first_str(
        probe.get("hostname"),
        _dig(probe, "host", "hostname"),
        _dig(probe, "host", "name"),
        probe.get("host") if isinstance(probe.get("host"), str) else None,
        meta.get("host"),
        meta.get("hostname"),
    )
    gpu = _first_str(
        _gpu_name(probe.get("gpus")),
        _gpu_name(_dig(probe, "gpu", "gpus")),
        _dig(probe, "gpu", "name"),
        probe.get("gpu_name"),
        probe.get("gpu") if isinstance(probe.get("gpu"), str) else None,
    )
    if host is None and path is not None:
        host = Path(path).name
    parts = [p for p in (host, gpu or "no GPU found") if p]
    return " · ".join(parts)


def _gpu_name(gpus) -> str | None:
    if isinstance(gpus, list) and gpus:
        names = [g.get("name") for g in gpus if isinstance(g, dict) and g.get("name")]
        if names:
            first = names[0]
            return f"{len(names)}× {first}" if len(names) > 1 and len(set(names)) == 1 else ", ".join(names)
    return None


def _dig(obj, *keys):
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _first_str(*values) -> str | None:
    for value in values:
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _number(value) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def load_run(path: str | Path) -> RunSummary:
    """Read and aggregate a run directory (RunDirError when it is not one)."""
    run = RunDir.open(path)
    meta = run.meta()
    notes: list[str] = []

    request_rows = read_jsonl(run.file(records.REQUESTS_FILE))
    if request_rows.bad_lines:
        notes.append(
            f"{records.REQUESTS_FILE}: skipped {len(request_rows.bad_lines)} unreadable line(s) "
            f"(lines {_short_list(request_rows.bad_lines)})"
        )
    by_key: dict[str, records.RequestRecord] = {}
    for row in request_rows.rows:
        try:
            rec = records.from_dict(records.RequestRecord, row)
        except records.RecordError as exc:  # a line missing required fields
            raise RunDirError(f"{run.file(records.REQUESTS_FILE)}: malformed request record ({exc})") from exc
        by_key[rec.key] = rec  # a re-recorded request (resume) replaces the earlier one
    if len(by_key) < len(request_rows.rows):
        notes.append(
            f"{len(request_rows.rows) - len(by_key)} request(s) were recorded twice; the later record is used"
        )
    requests = list(by_key.values())

    config_records: dict[str, records.ConfigRecord] = {}
    config_order: list[str] = []
    for rec in run.configs():
        if rec.config_id not in config_records:
            config_order.append(rec.config_id)
        config_records[rec.config_id] = rec  # the last attempt is the one that counts

    has_scores = run.file(records.SCORES_FILE).exists()
    scores: dict[str, dict[str, Any]] = {}
    for rec in run.scores():
        scores[rec.key] = rec.metrics if isinstance(rec.metrics, dict) else {}
    if not has_scores:
        notes.append(f"not scored: run bench score {run.path}")
    elif requests:
        unscored = [r for r in requests if not r.twin and r.key not in scores]
        if unscored:
            notes.append(
                f"{len(unscored)} of {sum(1 for r in requests if not r.twin)} non-twin requests have no score; "
                f"run bench score {run.path} to score them"
            )

    if scores:
        never = [name for name in ("factual_nli", "semantic_sim", "rougeL") if all(m.get(name) is None for m in scores.values())]
        if never:
            notes.append(
                f"not computed for any output: {', '.join(never)} (see the scoring log: a metric's model may have "
                "been unavailable)"
            )
    models = model_entries(meta)
    # Telemetry can run to hundreds of thousands of lines: read it only when a figure must come from it.
    needs_telemetry = any(not r.peak_vram_bytes for r in config_records.values()) or any(
        r.power_mean_w is None for r in requests
    )
    vram_fallback, power_samples = _telemetry_by_config(run) if needs_telemetry else ({}, {})

    groups: dict[tuple[str, str], list[records.RequestRecord]] = {}
    for rec in requests:
        groups.setdefault((rec.config_id, rec.mode), []).append(rec)
        if rec.config_id not in config_order:
            config_order.append(rec.config_id)
    modes_by_config: dict[str, set[str]] = {}
    for cid, mode in groups:
        modes_by_config.setdefault(cid, set()).add(mode)

    summaries = []
    for (cid, mode), recs in groups.items():
        summaries.append(
            _summarize_config(
                cid,
                mode,
                recs,
                scores,
                config_records.get(cid),
                models.get(cid) if isinstance(models.get(cid), dict) else {},
                vram_fallback.get(cid),
                power_samples.get(cid, []),
                several_modes=len(modes_by_config[cid]) > 1 or mode != "plain",
            )
        )
    order = {cid: i for i, cid in enumerate(list(models) + config_order)}
    summaries.sort(
        key=lambda c: (
            c.tier or "~",
            c.params_b if c.params_b is not None else math.inf,
            order.get(c.config_id, len(order)),
            c.twin,
            c.mode != "plain",
        )
    )

    failed = [rec for rec in config_records.values() if rec.status != "ok"]
    seen = set(config_records) | {cid for cid, _ in groups}
    not_run = [cid for cid in models if cid not in seen]
    if not requests and not config_records:
        raise RunDirError(f"{run.path}: no requests and no configuration records yet; nothing to report")
    return RunSummary(
        path=run.path,
        meta=meta,
        configs=summaries,
        failed=failed,
        not_run=not_run,
        config_records=config_records,
        requests=requests,
        scores=scores,
        has_scores=has_scores,
        notes=notes,
    )


def _summarize_config(
    cid: str,
    mode: str,
    recs: list[records.RequestRecord],
    scores: dict[str, dict[str, Any]],
    crec: records.ConfigRecord | None,
    entry: dict[str, Any],
    vram_fallback_bytes: int | None,
    power_samples_w: list[float],
    several_modes: bool,
) -> ConfigSummary:
    twin = bool(any(r.twin for r in recs) or (crec and crec.twin) or entry.get("twin"))
    timing = {name: summarize(getattr(r, name) for r in recs) for name in TIMING_FIELDS}
    # Energy per token falls back to energy / tokens where the engine stored only the energy.
    per_token = [
        r.energy_per_token_j
        if r.energy_per_token_j is not None
        else (r.energy_j / r.n_gen_tokens if r.energy_j is not None and r.n_gen_tokens else None)
        for r in recs
    ]
    timing["energy_per_token_j"] = summarize(per_token)
    if timing["power_mean_w"].empty and power_samples_w:
        # Requests carry no power of their own: the sampler's ticks for this configuration stand in.
        timing["power_mean_w"] = summarize(power_samples_w)

    metrics = [scores[r.key] for r in recs if r.key in scores]
    quality = {name: summarize(m.get(name) for m in metrics) for name in MEAN_METRICS}
    shares = {name: share(m.get(name) for m in metrics) for name in SHARE_METRICS}

    peak = crec.peak_vram_bytes if crec and crec.peak_vram_bytes else vram_fallback_bytes
    label = cid if not several_modes else f"{cid} [{mode}]"
    return ConfigSummary(
        config_id=cid,
        mode=mode,
        label=label,
        twin=twin,
        status=crec.status if crec else "unknown",
        stage=crec.stage if crec else None,
        tier=_first_str(entry.get("tier")),
        params_b=_number(entry.get("params_b")),
        quant=_first_str(entry.get("quant")),
        family=_first_str(entry.get("family")),
        device=crec.device if crec else None,
        flash_attn=crec.flash_attn if crec else None,
        n_requests=len(recs),
        n_scored=0 if twin else len(metrics),
        timing=timing,
        quality=quality,
        shares=shares,
        peak_vram_gib=peak / GIB if peak else None,
        truncated=share(r.finish_reason == "length" for r in recs),
        temperatures=tuple(sorted({float(r.temperature) for r in recs})),
        seeds=tuple(sorted({int(r.seed) for r in recs})),
    )


def _telemetry_by_config(run: RunDir) -> tuple[dict[str, int], dict[str, list[float]]]:
    """Per configuration: peak process GPU memory (bytes) and the board power samples (W)."""
    peak: dict[str, int] = {}
    power: dict[str, list[float]] = {}
    for sample in run.telemetry():
        cid = sample.config_id
        if not cid:
            continue
        mem = sample.proc_mem_bytes
        if isinstance(mem, (int, float)) and mem > peak.get(cid, 0):
            peak[cid] = int(mem)
        if isinstance(sample.power_w, (int, float)):
            power.setdefault(cid, []).append(float(sample.power_w))
    return peak, power


def _short_list(numbers: list[int], limit: int = 5) -> str:
    text = ", ".join(str(n) for n in numbers[:limit])
    return text + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")
