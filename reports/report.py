"""`bench report`: a run directory's report, assembled from a list of section builders.

To add a section, write a function (ReportContext) -> Section | None and put it in SECTIONS.
"""

from __future__ import annotations

from dataclasses import dataclass

from reports import plots, tables
from reports.aggregate import RunSummary, load_run
from reports.document import (
    Bullets,
    Cell,
    Column,
    Document,
    Note,
    Paragraph,
    Sample,
    Samples,
    Section,
    Table,
    assemble,
)
from reports.crosscheck import crosscheck_section
from reports.findings import findings
from reports.sweep import quant_damage_section, sweep_section, vram_section
from reports.recommend import candidate_rule, recommend

SAMPLE_CHARS = 2000


@dataclass
class ReportContext:
    run: RunSummary
    with_plots: bool = True


def overview(ctx: ReportContext) -> Section:
    run = ctx.run
    ok = [c for c in run.configs if c.status == "ok"]
    twins = {c.config_id for c in run.configs if c.twin}
    n_scored = sum(c.n_scored for c in run.configs)
    blocks = [
        Paragraph(
            f"{len({c.config_id for c in run.configs})} configuration(s) with results "
            f"({len({c.config_id for c in ok})} completed, {len(twins)} twin(s)), {len(run.failed)} failed; "
            f"{len(run.requests)} timed request(s), {n_scored} scored output(s)."
        )
    ]
    for note in run.notes:
        blocks.append(Note(note, "warn"))
    blocks.append(
        Note(
            "JSON parse % is the strict rate (the whole output must parse, as a pipeline's json.loads needs); "
            "the lenient rate (code fences and surrounding text stripped) is shown beside it. TPS is decode "
            "TPS. Twins are random-weight stand-ins with a model's shape: timing only, quality shown as —."
        )
    )
    return Section("overview", "Overview", blocks)


def _table_section(key: str, title: str, make):
    def build(ctx: ReportContext) -> Section | None:
        if not ctx.run.configs:
            return None
        return Section(key, title, [make(ctx.run)])

    build.__name__ = key
    return build


def recommendations(ctx: ReportContext) -> Section | None:
    frame = ctx.run.frame()
    if frame.empty or not frame["scored"].any():
        reason = f"not scored: run bench score {ctx.run.path}" if not ctx.run.has_scores else "no scored configuration"
        return Section("recommendations", "Recommendations by use case", [Note(f"No recommendations: {reason}.", "warn")])
    recs = recommend(frame)
    rows = [
        [
            Cell(r.use_case, r.use_case),
            Cell(r.choice or "none qualifies", r.choice),
            Cell(r.reason, r.reason),
            Cell(r.rule, r.rule),
        ]
        for r in recs
    ]
    table = Table(
        "recommendations",
        "Recommendations by use case",
        [Column("use_case", "Use case"), Column("choice", "Recommended"), Column("figures", "Figures"), Column("rule", "Rule")],
        rows,
    )
    return Section("recommendations", "Recommendations by use case", [Paragraph(candidate_rule()), table])


def findings_section(ctx: ReportContext) -> Section | None:
    items = findings(ctx.run)
    if not items:
        return None
    return Section("findings", "Findings", [Bullets(items)])


def plots_section(ctx: ReportContext) -> Section | None:
    if not ctx.with_plots or not ctx.run.configs:
        return None
    return Section("plots", "Plots", [draw(ctx.run) for draw in plots.REPORT_PLOTS])


def failures_section(ctx: ReportContext) -> Section | None:
    blocks = []
    table = tables.failures(ctx.run)
    if table is not None:
        blocks.append(table)
    if ctx.run.not_run:
        blocks.append(Note("Never attempted (in run.json, no record): " + ", ".join(ctx.run.not_run), "warn"))
    return Section("failed", "Failed configurations", blocks) if blocks else None


def samples_section(ctx: ReportContext) -> Section | None:
    run = ctx.run
    chosen: dict[tuple[str, str, str], object] = {}
    for rec in sorted(run.requests, key=lambda r: (r.rep, r.item_id, r.key)):
        if rec.twin:
            continue
        chosen.setdefault((rec.config_id, rec.mode, rec.variant), rec)
    if not chosen:
        return None
    groups: dict[str, list[Sample]] = {}
    for (cid, mode, variant), rec in chosen.items():
        metrics = run.scores.get(rec.key, {})
        facts = [f"item {rec.item_id}", f"rep {rec.rep}", f"{rec.n_gen_tokens} tokens", f"finish: {rec.finish_reason}"]
        if metrics.get("rougeL") is not None:
            facts.append(f"ROUGE-L {metrics['rougeL']:.3f}")
        if metrics.get("json_parse_strict") is not None:
            facts.append("strict parse: " + ("yes" if metrics["json_parse_strict"] else "no"))
        text = rec.output or ""
        if len(text) > SAMPLE_CHARS:
            text = text[:SAMPLE_CHARS] + f"\n… ({len(rec.output) - SAMPLE_CHARS} more characters)"
        label = cid if mode == "plain" else f"{cid} [{mode}]"
        groups.setdefault(label, []).append(Sample(variant, text, ", ".join(facts)))
    for samples in groups.values():
        samples.sort(key=lambda s: _variant_order(s.heading))
    blocks = [Paragraph("One output per configuration and variant (first item, first repetition), exactly as generated.")]
    blocks += [Samples(label, samples) for label, samples in groups.items()]
    return Section("samples", "Sample outputs", blocks)


def _variant_order(variant: str) -> tuple:
    """brief, mid, strong; text before JSON (the study's order); anything else after."""
    level, _, fmt = variant.partition("_")
    levels = {"brief": 0, "mid": 1, "strong": 2}
    return (levels.get(level, 9), {"text": 0, "json": 1}.get(fmt, 9), variant)


def method_section(ctx: ReportContext) -> Section:
    return Section(
        "method",
        "How the figures are computed",
        [
            Bullets(
                [
                    "Timing (TPS, latency, TTFT, prefill TPS, ITL p90, energy/token, power): median over requests, "
                    "with p10–p90 and n; percentiles by linear interpolation.",
                    "TPS = decode TPS, (generated tokens − 1) / (last token time − first token time), per request.",
                    "Quality (ROUGE, factual consistency, field completeness, key accuracy, repetition, fact "
                    "coverage, unsupported numbers): mean over scored outputs, as the study averaged, with sd and n.",
                    "Percentages (parse, schema, length compliance, extraneous output): k of n outputs for which "
                    "the metric was computed (JSON metrics: JSON variants only).",
                    "Efficiency score = TPS × ROUGE-L (the study's definition), here median decode TPS × mean ROUGE-L.",
                    "Energy per token: the request's GPU energy (NVML) / its generated tokens. Mean power: the "
                    "request's mean board power (the sampler's ticks when requests carry none). Peak VRAM: the "
                    "configuration's peak process GPU memory.",
                    "Twins (random weights, a real model's shape) give timing only; failed configurations are "
                    "listed with where they stopped.",
                ]
            )
        ],
    )


SECTIONS = [
    overview,
    _table_section("full_results", "Full results", tables.full_results),
    _table_section("json_reliability", "JSON reliability", tables.json_reliability),
    _table_section("efficiency", "Inference efficiency", tables.efficiency),
    _table_section("beyond_study", "Beyond the study", tables.beyond_study),
    recommendations,
    findings_section,
    plots_section,
    failures_section,
    crosscheck_section,
    vram_section,
    sweep_section,
    quant_damage_section,
    samples_section,
    method_section,
]


def build_report(run: RunSummary, with_plots: bool = True, sections=None) -> Document:
    meta = run.meta
    subtitle = [f"Run: {run.path.name}", f"Machine: {run.host_label}"]
    started = meta.get("started_utc")
    if isinstance(started, str) and started:
        subtitle.append(f"Started: {started}" + (f", finished: {meta['finished_utc']}" if meta.get("finished_utc") else ""))
    if isinstance(meta.get("status"), str) and meta["status"] != "completed":
        subtitle.append(f"Run status: {meta['status']}")
    return assemble("bench report", subtitle, sections or SECTIONS, ReportContext(run, with_plots))


def report_for(path, with_plots: bool = True) -> Document:
    return build_report(load_run(path), with_plots=with_plots)
