"""A synthetic run directory with hand-chosen figures, shared by the report and compare tests.

Written through bench.rundir and bench.records exactly as `bench profile` and `bench score`
write a real run. The figures are chosen so every aggregate can be worked out by hand:

  alpha:1b-q4_K_M  tier A  decode TPS 100,110,…,180 and one 400 (median 145, mean 166, p10 109, p90 202)
                           latency 1000,1100,…,1900 ms; TTFT 200,205,…,245 ms
                           energy/token 0.10,0.11,…,0.19 J; power 200…209 W; peak VRAM 2 GiB
                           ROUGE-L text .30 .35 .40 .45 .50, JSON .40 ×5 (mean .40) -> efficiency 58.0
                           JSON: strict parse 4/5, lenient 5/5, schema 1/5, extraneous 1/5,
                           field completeness 1,1,1,1,0 (.8), key accuracy 1,1,1,.5,0 (.7)
                           length ok 9/10; unsupported numbers 0,1,0,2,0 + 0×5 (mean .3)
  alpha:1b-q8_0    tier A  decode TPS half of the above (median 72.5); energy only as energy_j:
                           0.2 J × tokens (energy/token 0.2); ROUGE-L .45 everywhere; JSON 5/5, schema 5/5
  beta:7b-q4_K_M   tier B  decode TPS 40,42,…,58 (median 49); ROUGE-L .50; parse 5/5, schema 4/5;
                           peak VRAM only from telemetry (3 then 5 GiB -> 5 GiB)
  gamma:14b-q4_K_M~twin    twin: timing only (TPS 30…39, median 34.5), never scored
  delta:3b-q4_K_M  failed at load, no requests

One alpha:1b-q4_K_M output carries markup that must never run in the HTML report.
"""

from __future__ import annotations

from pathlib import Path

from bench import records
from bench.rundir import RunDir, new_run_dir

A1, A2, B1, TWIN, FAILED = (
    "alpha:1b-q4_K_M",
    "alpha:1b-q8_0",
    "beta:7b-q4_K_M",
    "gamma:14b-q4_K_M~twin",
    "delta:3b-q4_K_M",
)
GIB = 1024**3
ITEMS = ("i1", "i2", "i3", "i4", "i5")
VARIANTS = ("brief_text", "brief_json")
N_GEN = 64
PAYLOAD = (
    "<script>document.title='pwned';document.body.setAttribute('data-pwned','1')</script>"
    "<img src=x onerror=\"document.body.insertAdjacentHTML('beforeend','<div id=pwned-marker></div>')\">"
    " A fine description | with a pipe and ``` fences."
)

MODELS = {
    A1: {"tier": "A", "params_b": 1.0, "quant": "Q4_K_M", "family": "alpha", "size_bytes": 800_000_000},
    A2: {"tier": "A", "params_b": 1.0, "quant": "Q8_0", "family": "alpha", "size_bytes": 1_300_000_000},
    B1: {"tier": "B", "params_b": 7.0, "quant": "Q4_K_M", "family": "beta", "size_bytes": 4_400_000_000},
    TWIN: {"tier": "B", "params_b": 14.0, "quant": "Q4_K_M", "family": "gamma", "twin": True},
    FAILED: {"tier": "A", "params_b": 3.0, "quant": "Q4_K_M", "family": "delta"},
}


def _requests(config_id: str):
    """(index j, item, variant) in a fixed order: the five text requests, then the five JSON ones."""
    j = 0
    for variant in VARIANTS:
        for item in ITEMS:
            yield j, item, variant
            j += 1


def _token_times(ttft_ms: float, gap_ms: float) -> list[float]:
    """Arrival times with every seventh gap 30% longer, so a pacing plot has something to show."""
    times = [ttft_ms]
    for k in range(1, N_GEN):
        times.append(times[-1] + gap_ms * (1.3 if k % 7 == 0 else 1.0))
    return times


def _tps(config_id: str, j: int) -> float:
    a1 = 400 if j == 9 else 100 + 10 * j  # one fast outlier: the median (145) is not the mean (166)
    return {A1: a1, A2: (100 + 10 * j) / 2, B1: 40 + 2 * j, TWIN: 30 + j}[config_id]


def _scores(config_id: str, j: int, variant: str) -> dict:
    text = variant.endswith("_text")
    k = j % 5
    if config_id == A1:
        m = {
            "rouge1": 0.55,
            "rouge2": 0.25,
            "rougeL": (0.30 + 0.05 * k) if text else 0.40,
            "factual_nli": 0.7,
            "fact_coverage": 0.6,
            "unsupported_numbers": [0, 1, 0, 2, 0][k] if text else 0,
            "unsupported_number_share": 0.0,
            "repetition": 0.005,
            "length_ok": not (text and k == 4),
            "refusal": False,
            "language_ok": True,
        }
        if not text:
            m.update(
                json_parse_strict=k != 4,
                json_parse_lenient=True,
                schema_ok=k == 0,
                extraneous=k == 4,
                field_completeness=[1, 1, 1, 1, 0][k],
                key_accuracy=[1, 1, 1, 0.5, 0][k],
            )
        return _with_text_nones(m, text)
    rouge, schema = {A2: (0.45, True), B1: (0.50, k != 0)}[config_id]
    m = {
        "rouge1": rouge + 0.1,
        "rouge2": rouge - 0.2,
        "rougeL": rouge,
        "factual_nli": 0.8 if config_id == B1 else 0.75,
        "fact_coverage": 0.7,
        "unsupported_numbers": 0,
        "unsupported_number_share": 0.0,
        "repetition": 0.004 if config_id == B1 else 0.003,
        "length_ok": True,
        "refusal": False,
        "language_ok": True,
    }
    if not text:
        m.update(
            json_parse_strict=True,
            json_parse_lenient=True,
            schema_ok=schema,
            extraneous=False,
            field_completeness=1.0,
            key_accuracy=1.0,
        )
    return _with_text_nones(m, text)


def _with_text_nones(m: dict, text: bool) -> dict:
    if text:
        for key in ("json_parse_strict", "json_parse_lenient", "schema_ok", "field_completeness", "extraneous", "key_accuracy"):
            m[key] = None
    return m


def build_run(
    base: Path,
    *,
    host: str = "hostA",
    gpu: str = "NVIDIA H100 80GB HBM3",
    tps_scale: float = 1.0,
    with_scores: bool = True,
    changed_output: tuple[str, str] | None = None,
    flash_attn: bool = True,
    with_energy: bool = True,
    rename: dict[str, str] | None = None,
) -> Path:
    """Write the synthetic run under `base`.

    tps_scale multiplies every decode TPS (and divides TTFT and latency); changed_output=(config,
    request_id) rewords one output; with_energy=False drops every energy/power figure (no NVML);
    rename maps the synthetic config ids to others (e.g. the study's).
    """
    rename = rename or {}

    def name(cid: str) -> str:
        return rename.get(cid, cid)

    path = new_run_dir(base)
    run = RunDir(path)
    # The layout `bench profile` writes: the hwprobe dict under "hardware", manifest entries in "configs".
    run.write_meta(
        {
            "status": "completed",
            "started_utc": "2026-11-28T03:00:00Z",
            "host": host,
            "hardware": {"host": {"hostname": host}, "gpus": [{"index": 0, "name": gpu}]},
            "configs": [
                {"config_id": name(cid), "entry": {"id": name(cid), **entry}, "resolved": None}
                for cid, entry in MODELS.items()
            ],
            "options": {"reps": 1, "preset": "synthetic"},
        }
    )
    t0 = 1_700_000_000.0
    for cid in (A1, A2, B1, TWIN):
        twin = cid == TWIN
        for j, item, variant in _requests(cid):
            tps = _tps(cid, j) * tps_scale
            ttft = (200 + 5 * j) / tps_scale
            latency = (1000 + 100 * j) / tps_scale
            request_id = f"{item}/{variant}"
            output = f"Output of {cid} for {request_id}."
            if cid == A1 and j == 0:
                output = PAYLOAD
            if changed_output == (cid, request_id):
                output += " (worded differently)"
            energy_pt = 0.10 + 0.01 * j if cid == A1 and with_energy else None
            energy_j = 0.2 * N_GEN if cid == A2 else (energy_pt * N_GEN if energy_pt else None)
            if not with_energy:
                energy_j = None
            gap = (latency - ttft) / (N_GEN - 1)
            rec = records.RequestRecord(
                config_id=name(cid),
                rep=0,
                request_id=request_id,
                item_id=item,
                variant=variant,
                level="brief",
                format=variant.split("_")[1],
                mode="plain",
                twin=twin,
                n_prompt_tokens=300,
                n_gen_tokens=N_GEN,
                finish_reason="stop",
                output=output,
                ttft_ms=ttft,
                latency_ms=latency,
                prefill_tps=300 / ttft * 1000,
                decode_tps=tps,
                itl_p50_ms=gap,
                itl_p90_ms=gap * 1.2,
                itl_p99_ms=gap * 1.5,
                token_times_ms=_token_times(ttft, gap),
                seed=1234,
                temperature=0.0,
                max_tokens=128,
                t_start_unix=t0,
                t_end_unix=t0 + latency / 1000,
                energy_j=energy_j,
                energy_per_token_j=energy_pt,
                power_mean_w=200.0 + j if cid == A1 and with_energy else None,
                host=host,
            )
            run.append(records.REQUESTS_FILE, rec)
            if with_scores and not twin:
                run.append(
                    records.SCORES_FILE,
                    records.ScoreRecord(
                        key=rec.key,
                        config_id=name(cid),
                        request_id=request_id,
                        item_id=item,
                        variant=variant,
                        mode="plain",
                        rep=0,
                        metrics=_scores(cid, j, variant),
                    ),
                )
            t0 += 2
        run.append(
            records.CONFIGS_FILE,
            records.ConfigRecord(
                config_id=name(cid),
                status="ok",
                stage="done",
                n_requests=10,
                twin=twin,
                device="gpu",
                n_layers_offloaded=24,
                n_layers_total=24,
                flash_attn=flash_attn,
                sha256=f"sha-{cid}",
                peak_vram_bytes={A1: 2 * GIB, A2: 3 * GIB}.get(cid),
            ),
        )
    for mem in (3 * GIB, 5 * GIB, 4 * GIB):
        run.append(
            records.TELEMETRY_FILE,
            records.TelemetrySample(
                t_unix=t0,
                config_id=name(B1),
                rss_bytes=GIB,
                cpu_pct=10.0,
                proc_mem_bytes=mem,
                power_w=300.0 if with_energy else None,
            ),
        )
    run.append(
        records.CONFIGS_FILE,
        records.ConfigRecord(
            config_id=name(FAILED),
            status="failed",
            stage="load",
            n_requests=0,
            error="Failed to load model: cudaMalloc failed: out of memory",
            exit_code=1,
            last_log_lines=["llama_model_load: error loading model", "ggml_cuda: out of memory"],
        ),
    )
    return path


def test_synthetic_run_reads_back_through_rundir(tmp_path):
    run = RunDir.open(build_run(tmp_path))
    reqs = run.requests()
    assert len(reqs) == 40
    assert sum(r.twin for r in reqs) == 10
    assert len(run.scores()) == 30  # the twin is never scored
    assert [c.status for c in run.configs()].count("failed") == 1


def test_unscored_synthetic_run_has_no_score_file(tmp_path):
    run = RunDir.open(build_run(tmp_path, with_scores=False))
    assert not run.file(records.SCORES_FILE).exists()
