"""In-process vs server: the cross-check's tables, for `bench crosscheck` and as a `bench report` section.

Every comparison is over paired requests: the same configuration, repetition, request and mode on
both sides. Ratios are server / in-process of the median, with a 95% bootstrap interval that
resamples the pairs (BOOTSTRAP_RESAMPLES draws, fixed seed, so the same records always give the same
interval). Requests a flag marks are left out of the figures that flag spoils: a cached prompt or a
model reload out of TTFT and latency; a near-zero decode time out of server TPS (it is never printed).

Public API:
- `crosscheck_tables(run_path) -> CrosscheckTables | None`: pandas DataFrames + notes (None: no cross-check).
- `crosscheck_section(ctx) -> Section | None`: the `bench report` section builder (reads `ctx.run.path`).
- `crosscheck_document(run_path) -> Document` and `write_crosscheck_report(run_path) -> Path`
  (`RUN_DIR/crosscheck/report.md`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from bench import records
from bench.crosscheck.records import (
    FLAG_EVAL_NEAR_ZERO,
    FLAG_MODEL_RELOADED,
    FLAG_PROMPT_CACHED,
    FLAG_PROMPT_TOKENS_DIFFER,
    REPORT_FILE,
    CrosscheckRecord,
    CrosscheckSet,
    crosscheck_dir,
    read_crosschecks,
)
from bench.rundir import RunDir
from reports.document import DASH, Cell, Column, Document, Note, Paragraph, Section, Table, sig_text
from reports.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, RatioCI, clean, summarize

# Rule-based quality metrics scored for both sides alike (no NLI or embedding model in a cross-check).
QUALITY_MEANS = ("rougeL", "fact_coverage")
QUALITY_SHARES = ("length_ok", "json_parse_strict", "schema_ok")


@dataclass
class CrosscheckTables:
    tables: dict[str, pd.DataFrame]  # "speed", "latency", "agreement", "flags": one row per server x config
    notes: list[str] = field(default_factory=list)


@dataclass
class _Group:
    label: str
    kind: str
    config_id: str
    pairs: list[tuple[records.RequestRecord, CrosscheckRecord]]
    failed: list[CrosscheckRecord]
    twin: bool
    meta: dict[str, Any]


# --------------------------------------------------------------------------- statistics


def paired_ratio(ours, theirs, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 level: float = 0.95) -> RatioCI:
    """median(theirs) / median(ours) over pairs where both are measured, with a paired bootstrap CI."""
    a, b = [], []
    for x, y in zip(ours, theirs):
        xa, yb = clean([x]), clean([y])
        if xa.size and yb.size:
            a.append(float(xa[0]))
            b.append(float(yb[0]))
    n = len(a)
    if n == 0:
        return RatioCI(None, None, None, 0, 0, level, resamples)
    xa, xb = np.asarray(a), np.asarray(b)
    base = float(np.median(xa))
    ratio = float(np.median(xb)) / base if base != 0 else None
    if n < 2 or ratio is None:
        return RatioCI(ratio, None, None, n, n, level, resamples)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.median(xb[idx], axis=1) / np.median(xa[idx], axis=1)
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size == 0:
        return RatioCI(ratio, None, None, n, n, level, resamples)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(ratios, [tail, 100.0 - tail])
    return RatioCI(ratio, float(low), float(high), n, n, level, resamples)


def output_rouge_l(a: str, b: str, scorer=None) -> float:
    """ROUGE-L F between two outputs (1.0 when they are identical, empty or not)."""
    if a == b:
        return 1.0
    if scorer is None:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(scorer.score(a, b)["rougeL"].fmeasure)


# --------------------------------------------------------------------------- building the tables


def crosscheck_tables(run_path: str | Path) -> CrosscheckTables | None:
    sets = read_crosschecks(run_path)
    if not sets:
        return None
    run = RunDir.open(run_path)
    ours = {r.key: r for r in run.requests()}
    groups, notes = _groups(sets, ours)
    rows_speed, rows_latency, rows_agree, rows_flags = [], [], [], []
    quality, quality_note = _quality(groups)
    if quality_note:
        notes.append(quality_note)
    for g in groups:
        base = {"server": g.label, "kind": g.kind, "config_id": g.config_id, "n_pairs": len(g.pairs)}
        rows_speed.append({**base, **_speed(g)})
        rows_latency.append({**base, **_latency(g)})
        rows_agree.append({**base, **_agreement(g), **quality.get((g.label, g.config_id), {})})
        rows_flags.append({**base, **_flags(g)})
    tables = {
        "speed": pd.DataFrame(rows_speed),
        "latency": pd.DataFrame(rows_latency),
        "agreement": pd.DataFrame(rows_agree),
        "flags": pd.DataFrame(rows_flags),
    }
    return CrosscheckTables(tables, notes)


def _groups(sets: list[CrosscheckSet], ours: dict[str, records.RequestRecord]) -> tuple[list[_Group], list[str]]:
    notes: list[str] = []
    groups = []
    for s in sets:
        latest: dict[str, CrosscheckRecord] = {}
        for rec in s.records:
            latest[rec.key] = rec  # a rerun's record for a key replaces an earlier (failed) one
        kind = (s.meta.get("server") or {}).get("kind") or next((r.server_kind for r in s.records), "?")
        server = s.meta.get("server") or {}
        where = f"{server.get('url', '?')}" + (f", version {server['version']}" if server.get("version") else "")
        kind_name = {"ollama": "Ollama", "openai": "OpenAI-compatible server"}.get(kind, kind)
        notes.append(f"{s.label}: {kind_name} at {where}.")
        ok = [r for r in latest.values() if r.ok]
        if ok and all(r.eval_count is None for r in ok):
            notes.append(f"{s.label}: the server reported no decode timings (llama-server sends `timings`, "
                         "llama-cpp-python's server does not), so server-reported TPS is —.")
        inferred = sum(r.n_gen_tokens_source == "matched-output" for r in ok)
        if inferred:
            notes.append(f"{s.label}: {inferred} answer(s) came without a token count; where the text equals the "
                         "in-process output, its token count was used for client-measured TPS.")
        if s.bad_lines:
            notes.append(f"{s.label}: {len(s.bad_lines)} unreadable line(s) in crosscheck/{s.label}.jsonl were skipped.")
        config_ids = list(dict.fromkeys(r.config_id for r in latest.values()))
        for config_id in config_ids:
            mine = [r for r in latest.values() if r.config_id == config_id]
            pairs = [(ours[r.key], r) for r in mine if r.ok and r.key in ours]
            failed = [r for r in mine if not r.ok]
            missing = [r for r in mine if r.ok and r.key not in ours]
            if missing:
                notes.append(f"{s.label} / {config_id}: {len(missing)} server record(s) have no in-process twin "
                             "in requests.jsonl and are left out.")
            cmeta = (s.meta.get("configs") or {}).get(config_id, {})
            if cmeta.get("same_file") is False:
                notes.append(f"{s.label} / {config_id}: the server did not use the run's file "
                             f"({cmeta.get('same_file_evidence')}); outputs may differ for that reason alone.")
            elif cmeta.get("same_file") is None and cmeta.get("same_file_evidence"):
                notes.append(f"{s.label} / {config_id}: {cmeta['same_file_evidence']}.")
            if any(p.prompt_source != "run" for p in mine):
                notes.append(f"{s.label} / {config_id}: prompts were re-rendered from the GGUF's template (the run "
                             "did not store them).")
            if cmeta.get("in_process_device") or cmeta.get("n_ctx"):
                fa = {True: "on", False: "off"}.get(cmeta.get("in_process_flash_attn"), "unknown")
                sent = " (sent as num_ctx)" if kind == "ollama" else ""
                notes.append(f"{s.label} / {config_id}: in-process on {cmeta.get('in_process_device') or '?'}, "
                             f"flash attention {fa}, n_ctx {cmeta.get('n_ctx')}{sent}; the server's flash attention, "
                             "batch size and GPU placement are its own.")
            twin = any(o.twin for o, _ in pairs)
            groups.append(_Group(s.label, kind, config_id, pairs, failed, twin, cmeta))
    return groups, notes


def _summary_fields(prefix: str, values) -> dict[str, Any]:
    s = summarize(values)
    return {f"{prefix}_median": s.median, f"{prefix}_p10": s.p10, f"{prefix}_p90": s.p90, f"{prefix}_n": s.n}


def _ratio_fields(prefix: str, ci: RatioCI) -> dict[str, Any]:
    return {f"{prefix}_ratio": ci.ratio, f"{prefix}_ratio_lo": ci.low, f"{prefix}_ratio_hi": ci.high,
            f"{prefix}_ratio_n": ci.n_a}


def _speed(g: _Group) -> dict[str, Any]:
    ours_tps = [o.decode_tps for o, _ in g.pairs]
    server_tps = [s.server_tps for _, s in g.pairs]  # None where the decode time was near zero
    client_tps = [s.client_decode_tps for _, s in g.pairs]
    out = {}
    out.update(_summary_fields("ours_tps", ours_tps))
    out.update(_summary_fields("server_tps", server_tps))
    out.update(_ratio_fields("server_tps", paired_ratio(ours_tps, server_tps)))
    out.update(_summary_fields("client_tps", client_tps))
    out.update(_ratio_fields("client_tps", paired_ratio(ours_tps, client_tps)))
    return out


def _clean_timing(rec: CrosscheckRecord) -> bool:
    return FLAG_PROMPT_CACHED not in rec.flags and FLAG_MODEL_RELOADED not in rec.flags


def _latency(g: _Group) -> dict[str, Any]:
    usable = [(o, s) for o, s in g.pairs if _clean_timing(s)]
    out = {"n_timing_pairs": len(usable)}
    for name in ("ttft_ms", "latency_ms"):
        a = [getattr(o, name) for o, _ in usable]
        b = [getattr(s, name) for _, s in usable]
        short = name[: -len("_ms")]
        out.update(_summary_fields(f"ours_{short}_ms", a))
        out.update(_summary_fields(f"server_{short}_ms", b))
        out.update(_ratio_fields(short, paired_ratio(a, b)))
    return out


def _agreement(g: _Group) -> dict[str, Any]:
    if not g.pairs:
        return {"exact_match_k": 0, "exact_match_n": 0, "exact_match_pct": None, "output_rougeL_median": None,
                "output_rougeL_p10": None, "output_rougeL_p90": None}
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    exact = [o.output == s.output for o, s in g.pairs]
    rouge = [output_rouge_l(o.output, s.output, scorer) for o, s in g.pairs]
    s = summarize(rouge)
    temps = {o.temperature for o, _ in g.pairs}
    return {
        "exact_match_k": sum(exact),
        "exact_match_n": len(exact),
        "exact_match_pct": 100.0 * sum(exact) / len(exact),
        "output_rougeL_median": s.median,
        "output_rougeL_p10": s.p10,
        "output_rougeL_p90": s.p90,
        "temperature": temps.pop() if len(temps) == 1 else None,
    }


def _flags(g: _Group) -> dict[str, Any]:
    recs = [s for _, s in g.pairs]
    return {
        "n_failed": len(g.failed),
        "prompt_cached": sum(FLAG_PROMPT_CACHED in r.flags for r in recs),
        "eval_near_zero": sum(FLAG_EVAL_NEAR_ZERO in r.flags for r in recs),
        "model_reloaded": sum(FLAG_MODEL_RELOADED in r.flags for r in recs),
        "prompt_tokens_differ": sum(FLAG_PROMPT_TOKENS_DIFFER in r.flags for r in recs),
        "first_error": g.failed[0].error if g.failed else None,
    }


def _quality(groups: list[_Group]) -> tuple[dict[tuple[str, str], dict[str, Any]], str | None]:
    """Quality of both sides' outputs, scored here alike with the rule-based metrics; server − ours."""
    try:
        from scoring.score import score_many
        from scoring.tasks import load_suite
    except ImportError:
        return {}, "Quality deltas skipped: the scoring package (scoring.score.score_many) is not available."
    suite = load_suite()
    out: dict[tuple[str, str], dict[str, Any]] = {}
    skipped_twins = False
    for g in groups:
        if g.twin:
            skipped_twins = True
            continue
        if not g.pairs:
            continue
        rows = []
        for o, s in g.pairs:
            rows.append({"item_id": o.item_id, "variant": o.variant, "output": o.output})
            rows.append({"item_id": s.item_id, "variant": s.variant, "output": s.output})
        try:
            scored = score_many(rows, suite, nli=None, embedder=None)
        except Exception as exc:  # noqa: BLE001 - a scoring failure costs the quality columns, not the report
            return {}, f"Quality deltas skipped: scoring failed ({type(exc).__name__}: {exc})."
        ours_m, theirs_m = scored[0::2], scored[1::2]
        fields: dict[str, Any] = {}
        for name in QUALITY_MEANS + QUALITY_SHARES:
            diffs = [t.get(name) - o.get(name) for o, t in zip(ours_m, theirs_m)
                     if _number(o.get(name)) and _number(t.get(name))]
            scale = 100.0 if name in QUALITY_SHARES else 1.0  # yes/no metrics: percentage points
            fields[f"delta_{name}"] = scale * float(np.mean(diffs)) if diffs else None
            fields[f"delta_{name}_n"] = len(diffs)
        out[(g.label, g.config_id)] = fields
    note = None
    if skipped_twins:
        note = "Twins (random-weight stand-ins) get no quality deltas."
    return out, note


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value))


# --------------------------------------------------------------------------- presentation


def _fmt_summary(row, prefix: str, sig: int = 3) -> Cell:
    median = row.get(f"{prefix}_median")
    if median is None or _nan(median):
        return Cell(DASH, None, "", {"n": row.get(f"{prefix}_n", 0)})
    detail = f"p10–p90 {sig_text(row[f'{prefix}_p10'], sig)}–{sig_text(row[f'{prefix}_p90'], sig)}, n={row[f'{prefix}_n']}"
    return Cell(sig_text(median, sig), median, detail, {"n": row[f"{prefix}_n"]})


def _fmt_ratio(row, prefix: str) -> Cell:
    ratio = row.get(f"{prefix}_ratio")
    if ratio is None or _nan(ratio):
        return Cell(DASH, None, "", {"n": row.get(f"{prefix}_ratio_n", 0)})
    lo, hi, n = row.get(f"{prefix}_ratio_lo"), row.get(f"{prefix}_ratio_hi"), row.get(f"{prefix}_ratio_n")
    detail = f"95% CI {lo:.2f}–{hi:.2f}, n={n}" if lo is not None and not _nan(lo) else f"n={n}, no interval"
    flag = ""
    if lo is not None and not _nan(lo) and (lo > 1.0 or hi < 1.0):
        flag = "warn"
    return Cell(f"{ratio:.2f}×", ratio, detail, {"n": n, "ci_low": lo, "ci_high": hi}, flag)


def _nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _plain(value, digits: int | None = None) -> Cell:
    if value is None or _nan(value):
        return Cell(DASH, None)
    if digits is not None and isinstance(value, float):
        return Cell(f"{value:.{digits}f}", value)
    return Cell(str(value), value)


def _signed(value, digits: int, unit: str, n) -> Cell:
    if value is None or _nan(value):
        return Cell(DASH, None)
    return Cell(f"{value:+.{digits}f}{unit}", value, f"n={n}", {"n": n})


_Spec = list[tuple[str, str, str, Callable[[dict], Cell]]]

_ID_COLUMNS: _Spec = [
    ("server", "Server", "", lambda r: Cell(str(r["server"]), r["server"])),
    ("config_id", "Configuration", "", lambda r: Cell(str(r["config_id"]), r["config_id"])),
]

SPEED_SPEC: _Spec = _ID_COLUMNS + [
    ("n_pairs", "Pairs (n)", "requests answered on both sides", lambda r: _plain(r["n_pairs"])),
    ("ours_tps", "In-process decode (tok/s)", "median (n_gen-1)/(t_last-t_first), timed per token",
     lambda r: _fmt_summary(r, "ours_tps")),
    ("server_tps", "Server-reported (tok/s)", "median eval_count/eval_duration as the server reports it",
     lambda r: _fmt_summary(r, "server_tps")),
    ("server_tps_ratio", "Server/in-process TPS", "ratio of medians, paired bootstrap 95% CI",
     lambda r: _fmt_ratio(r, "server_tps")),
    ("client_tps", "Client-measured (tok/s)", "(n_gen-1)/(last-first streamed chunk), seen by this client",
     lambda r: _fmt_summary(r, "client_tps")),
    ("client_tps_ratio", "Client/in-process TPS", "ratio of medians, paired bootstrap 95% CI",
     lambda r: _fmt_ratio(r, "client_tps")),
]

LATENCY_SPEC: _Spec = _ID_COLUMNS + [
    ("n_timing_pairs", "Pairs (n)", "pairs without a cached-prompt or reload flag", lambda r: _plain(r["n_timing_pairs"])),
    ("ours_ttft_ms", "In-process TTFT (ms)", "request start -> first token", lambda r: _fmt_summary(r, "ours_ttft_ms")),
    ("server_ttft_ms", "Server TTFT (ms)", "request sent -> first streamed chunk with text",
     lambda r: _fmt_summary(r, "server_ttft_ms")),
    ("ttft_ratio", "TTFT ratio", "server/in-process, ratio of medians, paired bootstrap 95% CI",
     lambda r: _fmt_ratio(r, "ttft")),
    ("ours_latency_ms", "In-process latency (ms)", "request start -> last token",
     lambda r: _fmt_summary(r, "ours_latency_ms")),
    ("server_latency_ms", "Server latency (ms)", "request sent -> final chunk",
     lambda r: _fmt_summary(r, "server_latency_ms")),
    ("latency_ratio", "Latency ratio", "server/in-process, ratio of medians, paired bootstrap 95% CI",
     lambda r: _fmt_ratio(r, "latency")),
]


def _exact(r) -> Cell:
    if not r.get("exact_match_n"):
        return Cell(DASH, None)
    return Cell(f"{r['exact_match_pct']:.1f}%", r["exact_match_pct"], f"{r['exact_match_k']}/{r['exact_match_n']}",
                {"k": r["exact_match_k"], "n": r["exact_match_n"]}, "" if r["exact_match_k"] == r["exact_match_n"] else "warn")


AGREEMENT_SPEC: _Spec = _ID_COLUMNS + [
    ("exact_match", "Identical outputs (%)", "share of pairs whose outputs are the same string", _exact),
    ("output_rougeL", "ROUGE-L between outputs", "F-measure of server output against in-process output",
     lambda r: _fmt_summary({**r, "output_rougeL_n": r.get("exact_match_n")}, "output_rougeL")),
    ("delta_rougeL", "Δ ROUGE-L vs reference", "server − in-process, mean over pairs",
     lambda r: _signed(r.get("delta_rougeL"), 3, "", r.get("delta_rougeL_n"))),
    ("delta_fact_coverage", "Δ fact coverage", "server − in-process, mean over pairs",
     lambda r: _signed(r.get("delta_fact_coverage"), 3, "", r.get("delta_fact_coverage_n"))),
    ("delta_length_ok", "Δ length OK (pp)", "server − in-process, percentage points",
     lambda r: _signed(r.get("delta_length_ok"), 1, " pp", r.get("delta_length_ok_n"))),
    ("delta_json_parse_strict", "Δ JSON parse (pp)", "JSON variants: server − in-process, percentage points",
     lambda r: _signed(r.get("delta_json_parse_strict"), 1, " pp", r.get("delta_json_parse_strict_n"))),
]

FLAGS_SPEC: _Spec = _ID_COLUMNS + [
    ("n_pairs", "Pairs (n)", "", lambda r: _plain(r["n_pairs"])),
    ("n_failed", "Failed requests", "requests the server did not answer (error or timeout)", lambda r: _plain(r["n_failed"])),
    ("prompt_cached", "Cached prompt", "server evaluated fewer prompt tokens than the prompt has (over 1 less, or 0)",
     lambda r: _plain(r["prompt_cached"])),
    ("eval_near_zero", "Decode time ≈ 0", "eval_duration under 1 ms: server TPS left out",
     lambda r: _plain(r["eval_near_zero"])),
    ("model_reloaded", "Model reloaded", "load_duration of 50 ms or more inside a timed request",
     lambda r: _plain(r["model_reloaded"])),
    ("prompt_tokens_differ", "Prompt tokens differ", "the server counted other prompt tokens than the engine",
     lambda r: _plain(r["prompt_tokens_differ"])),
    ("first_error", "First error", "", lambda r: Cell(str(r["first_error"]) if r.get("first_error") else "", None)),
]

TABLE_TITLES = {
    "speed": ("Decode speed, in-process vs server", SPEED_SPEC),
    "latency": ("TTFT and latency, in-process vs server", LATENCY_SPEC),
    "agreement": ("Output agreement and quality deltas", AGREEMENT_SPEC),
    "flags": ("Flags", FLAGS_SPEC),
}


def display_rows(frame: pd.DataFrame, spec: _Spec) -> tuple[list[Column], list[list[Cell]]]:
    columns = [Column(key, label, help) for key, label, help, _ in spec]
    rows = []
    for record in frame.to_dict(orient="records"):
        record = {k: (None if _nan(v) else v) for k, v in record.items()}
        rows.append([make(record) for _, _, _, make in spec])
    return columns, rows


def _blocks(result: CrosscheckTables) -> list:
    blocks: list = [
        Paragraph(
            "The same GGUF, the same prompts (sent raw, exactly as the in-process engine rendered them) and the "
            "same settings, run by a server: ratios are server / in-process of the median over paired requests "
            "with a 95% bootstrap interval (pairs resampled, fixed seed). Server TTFT and latency are measured by "
            "this client and include HTTP and the server's tokenization; in-process TTFT starts after tokenization."
        )
    ]
    for note in result.notes:
        blocks.append(Note(note, "info"))
    for key, (title, spec) in TABLE_TITLES.items():
        frame = result.tables[key]
        if frame.empty:
            continue
        columns, rows = display_rows(frame, spec)
        blocks.append(Table(f"crosscheck_{key}", title, columns, rows))
    return blocks


def crosscheck_section(ctx) -> Section | None:
    """`bench report` section builder: None when the run has no cross-check."""
    result = crosscheck_tables(ctx.run.path)
    if result is None:
        return None
    return Section("crosscheck", "Cross-check against a server", _blocks(result))


def crosscheck_document(run_path: str | Path) -> Document:
    result = crosscheck_tables(run_path)
    run_path = Path(run_path)
    if result is None:
        sections = [Section("crosscheck", "Cross-check", [Note("No cross-check in this run directory.", "warn")])]
    else:
        sections = [Section("crosscheck", "Cross-check against a server", _blocks(result))]
    return Document("bench crosscheck", [f"Run: {run_path.name}"], sections)


def write_crosscheck_report(run_path: str | Path) -> Path:
    from reports.render_md import render_md

    path = crosscheck_dir(run_path) / REPORT_FILE
    path.write_text(render_md(crosscheck_document(run_path)), encoding="utf-8")
    return path
