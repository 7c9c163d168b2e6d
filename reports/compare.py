"""`bench compare RUN_A RUN_B …`: the same configurations on different hardware (or software).

The first run is the baseline. For every configuration both runs hold, each timing figure's
ratio (other / baseline) is the ratio of the medians over requests, with a bootstrap 95%
interval over requests; a ratio is significant when its interval excludes 1. Quality is
compared as differences of means, and outputs are checked for agreement: at temperature 0
with the same seed the same model should write the same text, so a difference is flagged.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure as MplFigure

from bench.errors import BenchError
from reports.aggregate import ConfigSummary, RunSummary, load_run
from reports.document import (
    DASH,
    Bullets,
    Cell,
    Column,
    Document,
    Figure,
    Note,
    Paragraph,
    Section,
    Skipped,
    Table,
    assemble,
    missing,
)
from reports.stats import BOOTSTRAP_RESAMPLES, RatioCI, bootstrap_ratio

# (request field, label, unit, True when a higher figure is better)
RATIO_METRICS = (
    ("decode_tps", "TPS", "tok/s", True),
    ("ttft_ms", "TTFT", "ms", False),
    ("latency_ms", "Latency", "ms", False),
    ("energy_per_token_j", "J/token", "J", False),
)

# (label, how to read it from a ConfigSummary, digits, unit suffix)
QUALITY_DELTAS = (
    ("ROUGE-L", lambda c: c.q("rougeL").mean, 3, ""),
    ("Factual", lambda c: c.q("factual_nli").mean, 3, ""),
    ("JSON parse % (strict)", lambda c: c.s("json_parse_strict").pct, 1, " pts"),
    ("Schema %", lambda c: c.s("schema_ok").pct, 1, " pts"),
    ("Length compliance %", lambda c: c.s("length_ok").pct, 1, " pts"),
)


@dataclass
class OutputAgreement:
    comparable: int  # request pairs at temperature 0 with equal seeds
    differing: int
    total_pairs: int  # request pairs present in both runs
    causes: list[str]  # known reasons outputs may legitimately differ (flash attention, file hash)

    @property
    def differ(self) -> bool:
        return self.differing > 0


def _values(run: RunSummary, c: ConfigSummary, name: str) -> list[float]:
    out = []
    for r in run.requests:
        if r.config_id != c.config_id or r.mode != c.mode:
            continue
        value = getattr(r, name)
        if name == "energy_per_token_j" and value is None and r.energy_j is not None and r.n_gen_tokens:
            value = r.energy_j / r.n_gen_tokens
        out.append(value)
    return out


def ratio_ci(base: RunSummary, other: RunSummary, cb: ConfigSummary, co: ConfigSummary, name: str) -> RatioCI:
    return bootstrap_ratio(_values(base, cb, name), _values(other, co, name))


def output_agreement(base: RunSummary, other: RunSummary, cb: ConfigSummary, co: ConfigSummary) -> OutputAgreement:
    def index(run, c):
        return {(r.rep, r.request_id): r for r in run.requests if r.config_id == c.config_id and r.mode == c.mode}

    a, b = index(base, cb), index(other, co)
    common = sorted(set(a) & set(b))
    comparable = differing = 0
    for key in common:
        ra, rb = a[key], b[key]
        if ra.temperature == 0 and rb.temperature == 0 and ra.seed == rb.seed:
            comparable += 1
            differing += ra.output != rb.output
    causes = []
    ka, kb = base.config_records.get(cb.config_id), other.config_records.get(co.config_id)
    if ka and kb:
        if ka.flash_attn is not None and kb.flash_attn is not None and ka.flash_attn != kb.flash_attn:
            causes.append(f"flash attention {_onoff(ka.flash_attn)} vs {_onoff(kb.flash_attn)}")
        if ka.sha256 and kb.sha256 and ka.sha256 != kb.sha256:
            causes.append("different model files (sha256)")
        if ka.device and kb.device and ka.device != kb.device:
            causes.append(f"layers on {ka.device} vs {kb.device}")
    return OutputAgreement(comparable, differing, len(common), causes)


def _onoff(flag: bool) -> str:
    return "on" if flag else "off"


def ratio_cell(ci: RatioCI, higher_is_better: bool) -> Cell:
    if ci.ratio is None:
        return missing("not measured in both runs")
    fields = {"low": ci.low, "high": ci.high, "significant": ci.significant, "n_base": ci.n_a, "n_other": ci.n_b}
    if ci.low is None:
        return Cell(text=f"{ci.ratio:.3f}×", value=ci.ratio, detail=f"no interval (n={ci.n_a}/{ci.n_b})", fields=fields)
    verdict = "significant" if ci.significant else "not significant"
    flag = ""
    if ci.significant:
        better = ci.ratio > 1 if higher_is_better else ci.ratio < 1
        flag = "good" if better else "bad"
    return Cell(
        text=f"{ci.ratio:.3f}×",
        value=ci.ratio,
        detail=f"95% CI {ci.low:.3f}–{ci.high:.3f}, {verdict}; n={ci.n_a}/{ci.n_b}",
        fields=fields,
        flag=flag,
    )


def _labels(runs: list[RunSummary]) -> list[str]:
    labels = [r.host_label for r in runs]
    return [f"{label} ({run.path.name})" if labels.count(label) > 1 else label for label, run in zip(labels, runs)]


@dataclass
class CompareContext:
    runs: list[RunSummary]
    labels: list[str]


def runs_section(ctx: CompareContext) -> Section:
    rows = []
    for i, (run, label) in enumerate(zip(ctx.runs, ctx.labels)):
        rows.append(
            [
                Cell("baseline" if i == 0 else f"run {i + 1}", "baseline" if i == 0 else f"run {i + 1}"),
                Cell(label, label),
                Cell(str(run.path), str(run.path)),
                Cell(str(len({c.config_id for c in run.configs})), len({c.config_id for c in run.configs})),
                Cell(str(len(run.requests)), len(run.requests)),
                Cell(str(len(run.failed)), len(run.failed)),
            ]
        )
    table = Table(
        "runs",
        "Runs compared",
        [
            Column("role", "Role"),
            Column("machine", "Host · GPU", "from run.json's hardware probe"),
            Column("path", "Run directory"),
            Column("configs", "Configurations"),
            Column("requests", "Requests"),
            Column("failed", "Failed"),
        ],
        rows,
    )
    blocks = [
        table,
        Paragraph(
            "Ratios are other run / baseline, of the medians over requests, with a bootstrap 95% confidence "
            f"interval ({BOOTSTRAP_RESAMPLES} resamples of each run's requests, fixed seed). A ratio is marked "
            "significant when its interval excludes 1. TPS above 1 is faster; TTFT, latency and J/token below 1 "
            "are better."
        ),
    ]
    for run in ctx.runs:
        for note in run.notes:
            blocks.append(Note(f"{run.path.name}: {note}", "warn"))
    return Section("runs", "Runs compared", blocks)


def _pairs(base: RunSummary, other: RunSummary):
    index = {(c.config_id, c.mode): c for c in other.configs}
    for cb in base.configs:
        co = index.get((cb.config_id, cb.mode))
        if co is not None:
            yield cb, co


def pair_section(ctx: CompareContext, i: int) -> Section:
    base, other = ctx.runs[0], ctx.runs[i]
    pairs = list(_pairs(base, other))
    title = f"{ctx.labels[i]} vs {ctx.labels[0]}"
    if not pairs:
        return Section(f"pair{i}", title, [Note("The two runs share no configuration; nothing to compare.", "warn")])
    timing_rows, quality_rows = [], []
    cis = {(cb.label, name): ratio_ci(base, other, cb, co, name) for cb, co in pairs for name, *_ in RATIO_METRICS}
    for cb, co in pairs:
        timing_rows.append(
            [Cell(cb.label, cb.label)] + [ratio_cell(cis[cb.label, name], better) for name, _, _, better in RATIO_METRICS]
        )
        quality_rows.append([Cell(cb.label, cb.label)] + _quality_cells(cb, co) + [_agreement_cell(output_agreement(base, other, cb, co))])
    timing = Table(
        f"timing_ratios_{i}",
        "Timing ratios (other / baseline)",
        [Column("config", "Configuration")]
        + [Column(f"{name}_ratio", f"{label} ratio", f"median {label} ({unit}) of the other run / baseline") for name, label, unit, _ in RATIO_METRICS],
        timing_rows,
    )
    quality = Table(
        f"quality_deltas_{i}",
        "Quality differences (other − baseline) and output agreement",
        [Column("config", "Configuration")]
        + [Column(f"delta_{label}", f"Δ {label}") for label, *_ in QUALITY_DELTAS]
        + [Column("outputs", "Outputs (temperature 0, same seed)", "identical text expected from the same model")],
        quality_rows,
        note="Quality deltas are differences of means (percentages: of percentage points). "
        "Twins and unscored runs show —.",
    )
    blocks = [timing, quality]
    only_base = sorted({c.label for c in base.configs} - {cb.label for cb, _ in pairs})
    only_other = sorted({c.label for c in other.configs} - {co.label for _, co in pairs})
    if only_base or only_other:
        items = []
        if only_base:
            items.append(f"only in the baseline: {', '.join(only_base)}")
        if only_other:
            items.append(f"only in {ctx.labels[i]}: {', '.join(only_other)}")
        blocks.append(Bullets(items))
    blocks.append(_forest(f"ratios_{i}", [cb.label for cb, _ in pairs], cis))
    return Section(f"pair{i}", title, blocks)


def _quality_cells(cb: ConfigSummary, co: ConfigSummary) -> list[Cell]:
    cells = []
    for label, read, digits, unit in QUALITY_DELTAS:
        a, b = read(cb), read(co)
        if a is None or b is None:
            why = "twin" if cb.twin or co.twin else "not scored in both runs"
            cells.append(Cell(DASH, None, why, {"why_missing": why}))
            continue
        cells.append(
            Cell(
                f"{b - a:+.{digits}f}{unit}",
                b - a,
                f"{a:.{digits}f} → {b:.{digits}f}",
                {"baseline": a, "other": b},
            )
        )
    return cells


def _agreement_cell(agree: OutputAgreement) -> Cell:
    causes = f" — likely cause: {'; '.join(agree.causes)}" if agree.causes else ""
    fields = {"comparable": agree.comparable, "differing": agree.differing, "pairs": agree.total_pairs}
    if agree.total_pairs == 0:
        return Cell("no common requests", None, "", fields)
    if agree.comparable == 0:
        return Cell("not comparable", None, "temperature > 0 or different seeds", fields)
    if agree.differ:
        return Cell(
            "outputs differ",
            agree.differing,
            f"{agree.differing}/{agree.comparable} differ{causes}",
            fields,
            flag="warn",
        )
    return Cell("identical", 0, f"{agree.comparable}/{agree.comparable} match", fields)


def _forest(key: str, labels: list[str], cis: dict[tuple[str, str], RatioCI]) -> Figure | Skipped:
    title = "Ratios with 95% intervals (other / baseline)"
    metrics = []
    for name, label, _, _ in RATIO_METRICS:
        rows = [(lab, cis[lab, name]) for lab in labels if cis[lab, name].ratio is not None]
        if rows:
            metrics.append((label, rows))
    if not metrics:
        return Skipped(title, "no timing figure was measured in both runs")
    n_rows = max(len(rows) for _, rows in metrics)
    fig = MplFigure(figsize=(3.2 * len(metrics) + 1.5, 0.35 * n_rows + 1.6))
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    ys = {lab: len(labels) - 1 - j for j, lab in enumerate(labels)}
    for ax, (label, rows) in zip(axes, metrics):
        for lab, ci in rows:
            y = ys[lab]
            colour = "#2a9d6f" if ci.significant else "#6b7a8f"
            if ci.low is not None:
                ax.plot([ci.low, ci.high], [y, y], color=colour, lw=2)
            ax.plot([ci.ratio], [y], "o", color=colour)
        ax.axvline(1.0, color="#444", lw=1, ls="--")
        ax.set_title(label, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(list(ys.values()), list(ys.keys()), fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return Figure(key, title, buf.getvalue(), "Dots: ratio of medians; bars: bootstrap 95% interval; green: significant.")


def compare_runs(runs: list[RunSummary]) -> Document:
    if len(runs) < 2:
        raise BenchError("bench compare needs two or more runs (or one run with --reference study)")
    ctx = CompareContext(runs, _labels(runs))
    builders = [runs_section] + [lambda c, i=i: pair_section(c, i) for i in range(1, len(runs))]
    return assemble("bench compare", [f"Baseline: {ctx.labels[0]}"], builders, ctx)


def compare_paths(paths: list[str | Path]) -> Document:
    return compare_runs([load_run(p) for p in paths])
