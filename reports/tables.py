"""The report's tables, built from a RunSummary: the study's three plus what it lacked."""

from __future__ import annotations

from reports.aggregate import ConfigSummary, RunSummary
from reports.document import DASH, Cell, Column, Table, missing, number_text, sig_text
from reports.stats import Share, Summary, pareto_front

# ------------------------------------------------------------------ cells


def timing_cell(summary: Summary, digits: int = 1, thousands: bool = False, sig: int | None = None) -> Cell:
    """Median, with p10–p90 and n beside it."""
    if summary.empty:
        return missing("not measured")
    fmt = (lambda v: sig_text(v, sig)) if sig else (lambda v: number_text(v, digits, thousands))
    return Cell(
        text=fmt(summary.median),
        value=summary.median,
        detail=f"p10–p90 {fmt(summary.p10)}–{fmt(summary.p90)}, n={summary.n}",
        fields={"n": summary.n, "p10": summary.p10, "p90": summary.p90},
    )


def mean_cell(summary: Summary, digits: int = 3) -> Cell:
    """Mean (as the study averaged quality), with sd and n beside it."""
    if summary.empty:
        return missing("not computed")
    sd = f"sd {number_text(summary.sd, digits)}, " if summary.sd is not None else ""
    return Cell(
        text=number_text(summary.mean, digits),
        value=summary.mean,
        detail=f"{sd}n={summary.n}",
        fields={"n": summary.n, "sd": summary.sd},
    )


def share_cell(part: Share, extra: str = "") -> Cell:
    if part.n == 0:
        return missing("not computed")
    detail = f"{part.k}/{part.n}" + (f"; {extra}" if extra else "")
    return Cell(text=f"{part.pct:.1f}%", value=part.pct, detail=detail, fields={"k": part.k, "n": part.n})


def quality_gate(c: ConfigSummary) -> Cell | None:
    """The cell every quality column shows when the configuration has no quality at all."""
    if c.twin:
        return Cell(text=DASH, value=None, detail="twin: timing only", fields={"why_missing": "twin"})
    if c.n_scored == 0:
        return Cell(text=DASH, value=None, detail="not scored", fields={"why_missing": "not scored"})
    return None


def label_cell(c: ConfigSummary) -> Cell:
    flags = []
    if c.twin:
        flags.append("twin")
    if c.status == "failed":
        flags.append(f"failed at {c.stage or '?'}")
    if c.device == "cpu":
        flags.append("ran on CPU")
    return Cell(text=c.label, value=c.label, detail=", ".join(flags), fields={"flags": ", ".join(flags)})


def tier_cell(c: ConfigSummary) -> Cell:
    return Cell(text=c.tier or DASH, value=c.tier)


def _quality(c: ConfigSummary, make) -> Cell:
    gate = quality_gate(c)
    return gate if gate is not None else make()


def parse_cell(c: ConfigSummary) -> Cell:
    """Strict parse rate as the headline, the lenient rate beside it."""
    strict, lenient = c.s("json_parse_strict"), c.s("json_parse_lenient")
    lenient_text = f"lenient {lenient.pct:.1f}%" if lenient.n else ""
    return share_cell(strict, extra=lenient_text) if strict.n else missing("no JSON requests scored")


# ------------------------------------------------------------------ tables

CONFIG_COL = Column("config", "Configuration", "config id from the manifest; [mode] when a run used several")
TIER_COL = Column("tier", "Tier", "manifest tier (A: edge, B: server-light)")
TPS_COL = Column("decode_tps", "TPS (tok/s)", "decode tokens per second: (n_gen - 1) / (t_last - t_first); median")
LAT_COL = Column("latency_ms", "Latency (ms)", "request start to last token; median")
TTFT_COL = Column("ttft_ms", "TTFT (ms)", "request start to first token; median")
PARSE_COL = Column(
    "json_parse_pct", "JSON parse % (strict)", "json.loads of the whole output; the lenient rate (fences/extra text stripped) beside it"
)
SCHEMA_COL = Column("schema_pct", "Schema %", "jsonschema validation of the parsed object")


def full_results(run: RunSummary) -> Table:
    rows = []
    for c in run.configs:
        rows.append(
            [
                label_cell(c),
                tier_cell(c),
                _quality(c, lambda: mean_cell(c.q("rouge1"))),
                _quality(c, lambda: mean_cell(c.q("rouge2"))),
                _quality(c, lambda: mean_cell(c.q("rougeL"))),
                _quality(c, lambda: mean_cell(c.q("factual_nli"))),
                timing_cell(c.t("decode_tps"), 1),
                timing_cell(c.t("latency_ms"), 0, thousands=True),
                timing_cell(c.t("ttft_ms"), 0, thousands=True),
                _quality(c, lambda: parse_cell(c)),
                _quality(c, lambda: share_cell(c.s("schema_ok"))),
                _quality(c, lambda: share_cell(c.s("length_ok"))),
                _quality(c, lambda: mean_cell(c.q("repetition"))),
            ]
        )
    columns = [
        CONFIG_COL,
        TIER_COL,
        Column("rouge1", "ROUGE-1", "F1 against the reference; mean over scored outputs"),
        Column("rouge2", "ROUGE-2", "mean"),
        Column("rougeL", "ROUGE-L", "mean"),
        Column("factual", "Factual consistency", "NLI entailment against the fact sheet; mean"),
        TPS_COL,
        LAT_COL,
        TTFT_COL,
        PARSE_COL,
        SCHEMA_COL,
        Column("length_ok_pct", "Length compliance %", "output within the level's word/sentence band"),
        Column("repetition", "Repetition", "repeated n-gram share; mean"),
    ]
    return Table("full_results", "Full results", columns, rows, note=TIMING_NOTE + " " + QUALITY_NOTE)


TIMING_NOTE = "Timing cells: median over requests, p10–p90 and n beside it."
QUALITY_NOTE = "Quality cells: mean over scored outputs, sd and n beside it; percentages give k/n."


def json_reliability(run: RunSummary) -> Table:
    rows = []
    for c in run.configs:
        rows.append(
            [
                label_cell(c),
                tier_cell(c),
                _quality(c, lambda: parse_cell(c)),
                _quality(c, lambda: share_cell(c.s("schema_ok"))),
                _quality(c, lambda: mean_cell(c.q("field_completeness"))),
                _quality(c, lambda: share_cell(c.s("extraneous"))),
                _quality(c, lambda: mean_cell(c.q("key_accuracy"))),
            ]
        )
    columns = [
        CONFIG_COL,
        TIER_COL,
        PARSE_COL,
        SCHEMA_COL,
        Column("field_completeness", "Field completeness", "share of required fields present and non-empty; mean"),
        Column("extraneous_pct", "Extraneous output %", "text outside the JSON object (fences, commentary)"),
        Column("key_accuracy", "Key accuracy", "share of keys named as the schema names them; mean"),
    ]
    return Table(
        "json_reliability",
        "JSON reliability",
        columns,
        rows,
        note="Over the JSON variants only. The headline parse rate is strict (the whole output must be JSON, "
        "as a pipeline's json.loads needs); the lenient rate, after stripping code fences and surrounding "
        "text, is given beside it.",
    )


def efficiency(run: RunSummary) -> Table:
    points = [(c.t("decode_tps").median, c.q("rougeL").mean) for c in run.configs]
    eligible = [i for i, (x, y) in enumerate(points) if x is not None and y is not None]
    front = {eligible[i] for i in pareto_front([points[i] for i in eligible])}
    rows = []
    for i, c in enumerate(run.configs):
        eff = c.efficiency
        gate = quality_gate(c)
        if eff is None:
            eff_cell = gate or missing("needs TPS and ROUGE-L")
        else:
            eff_cell = Cell(
                text=number_text(eff, 1),
                value=eff,
                detail=f"= {c.t('decode_tps').median:.1f} × {c.q('rougeL').mean:.3f}",
            )
        rows.append(
            [
                label_cell(c),
                tier_cell(c),
                timing_cell(c.t("decode_tps"), 1),
                timing_cell(c.t("latency_ms"), 0, thousands=True),
                timing_cell(c.t("ttft_ms"), 0, thousands=True),
                _quality(c, lambda: mean_cell(c.q("rougeL"))),
                eff_cell,
                Cell(text="yes" if i in front else "", value=1 if i in front else 0, flag="good" if i in front else ""),
            ]
        )
    columns = [
        CONFIG_COL,
        TIER_COL,
        TPS_COL,
        LAT_COL,
        TTFT_COL,
        Column("rougeL", "ROUGE-L", "mean"),
        Column("efficiency", "Efficiency score", "the study's: TPS × ROUGE-L (median decode TPS × mean ROUGE-L)"),
        Column("pareto", "On quality–speed frontier", "no other configuration is both faster and better on ROUGE-L"),
    ]
    return Table(
        "efficiency",
        "Inference efficiency",
        columns,
        rows,
        note="Efficiency score = TPS × ROUGE-L, the study's definition (its 226.5 × 0.390 = 88.3). "
        "The frontier marks configurations no other one beats on both decode TPS and ROUGE-L.",
    )


def beyond_study(run: RunSummary) -> Table:
    rows = []
    for c in run.configs:
        vram = c.peak_vram_gib
        rows.append(
            [
                label_cell(c),
                timing_cell(c.t("energy_per_token_j"), sig=3),
                timing_cell(c.t("power_mean_w"), 0),
                Cell(text=number_text(vram, 2), value=vram) if vram is not None else missing("not measured"),
                timing_cell(c.t("prefill_tps"), 0, thousands=True),
                timing_cell(c.t("itl_p90_ms"), 1),
                _quality(c, lambda: mean_cell(c.q("fact_coverage"))),
                _quality(c, lambda: mean_cell(c.q("unsupported_numbers"), 2)),
                share_cell(c.truncated),
            ]
        )
    columns = [
        CONFIG_COL,
        Column("energy_per_token_j", "Energy/token (J)", "GPU energy over the request / generated tokens; median"),
        Column("power_mean_w", "Mean power (W)", "GPU board power during the request; median over requests"),
        Column("peak_vram_gib", "Peak VRAM (GiB)", "peak GPU memory of the process while the configuration ran"),
        Column("prefill_tps", "Prefill TPS (tok/s)", "prompt tokens / TTFT; median"),
        Column("itl_p90_ms", "ITL p90 (ms)", "each request's 90th-percentile inter-token gap; median over requests"),
        Column("fact_coverage", "Fact coverage", "share of fact-sheet facts the output states; mean"),
        Column("unsupported_numbers", "Unsupported numbers", "numbers in the output not in the fact sheet, per output; mean"),
        Column("truncated_pct", "Hit max_tokens %", "outputs that stopped at the token budget"),
    ]
    return Table(
        "beyond_study",
        "Beyond the study",
        columns,
        rows,
        note="Energy, power, memory, prefill speed, token pacing and fact checks, which the study did not report. "
        + TIMING_NOTE
        + " Energy and power come from NVML; without NVML they are not measured (—).",
    )


def failures(run: RunSummary) -> Table | None:
    if not run.failed:
        return None
    rows = []
    for rec in run.failed:
        cause = rec.error or ""
        if rec.signal:
            cause = f"{cause} (signal {rec.signal})".strip()
        elif rec.exit_code not in (None, 0):
            cause = f"{cause} (exit {rec.exit_code})".strip()
        rows.append(
            [
                Cell(text=rec.config_id, value=rec.config_id),
                Cell(text=rec.stage or DASH, value=rec.stage),
                Cell(text=cause or "no error recorded", value=cause),
                Cell(text=str(rec.n_requests), value=rec.n_requests),
                Cell(
                    text=" / ".join(rec.last_log_lines[-3:]) if rec.last_log_lines else DASH,
                    value=" / ".join(rec.last_log_lines[-3:]),
                ),
            ]
        )
    columns = [
        Column("config", "Configuration"),
        Column("stage", "Failed at", "fetch | load | warmup | generate | child"),
        Column("error", "Error"),
        Column("n_requests", "Requests recorded"),
        Column("last_log", "Last log lines"),
    ]
    return Table("failed", "Failed configurations", columns, rows)
