"""`bench compare RUN --reference study`: our figures beside the published study's tables.

The study's tables ship in reports/data/. Its hardware was not disclosed and its timings are
Ollama's averages, so timing ratios compare machine and engine together, never the model alone;
the report says so wherever it prints them.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from reports.aggregate import ConfigSummary, RunSummary, load_run, model_entries
from reports.document import Cell, Column, Document, Note, Paragraph, Section, Table, assemble, missing

DATA_DIR = Path(__file__).resolve().parent / "data"
RESULTS_CSV = DATA_DIR / "study_results.csv"
JSON_CSV = DATA_DIR / "study_json.csv"

HARDWARE_NOTE = (
    "The study did not disclose its hardware, and its TPS, latency and TTFT are Ollama's figures "
    "(averages over its runs). Timing ratios therefore compare machine and engine together, not the models."
)


@dataclass(frozen=True)
class StudyMetric:
    column: str  # the study CSV's column
    label: str
    kind: str  # "quality" | "timing"
    source: str  # where ours comes from: "t" timing summary (mean), "q" quality mean, "s" share (%)
    name: str  # the request field or score metric
    digits: int
    ours_note: str = ""

    def ours(self, c: ConfigSummary) -> tuple[float | None, str]:
        """Our figure and what it is (mean with sd and n, or k/n)."""
        if self.source == "s":
            part = c.s(self.name)
            return part.pct, (f"{part.k}/{part.n}" if part.n else "")
        summary = c.t(self.name) if self.source == "t" else c.q(self.name)
        if summary.empty:
            return None, ""
        sd = f"sd {summary.sd:,.{self.digits}f}, " if summary.sd is not None else ""
        return summary.mean, f"mean, {sd}n={summary.n}"


# Timing uses our means, not medians, because the study printed averages.
METRICS = (
    StudyMetric("rouge1", "ROUGE-1", "quality", "q", "rouge1", 3),
    StudyMetric("rouge2", "ROUGE-2", "quality", "q", "rouge2", 3),
    StudyMetric("rougeL", "ROUGE-L", "quality", "q", "rougeL", 3),
    StudyMetric("factual", "Factual consistency", "quality", "q", "factual_nli", 3),
    StudyMetric("tps", "TPS (tok/s)", "timing", "t", "decode_tps", 1, "decode TPS"),
    StudyMetric("latency_ms", "Latency (ms)", "timing", "t", "latency_ms", 0),
    StudyMetric("ttft_ms", "TTFT (ms)", "timing", "t", "ttft_ms", 0),
    StudyMetric("json_parse_pct", "JSON parse %", "quality", "s", "json_parse_strict", 1, "ours: strict"),
    StudyMetric("schema_pct", "Schema %", "quality", "s", "schema_ok", 1),
    StudyMetric("len_comply_pct", "Length compliance %", "quality", "s", "length_ok", 1),
    StudyMetric("repetition", "Repetition", "quality", "q", "repetition", 3),
    StudyMetric("field_completeness", "Field completeness", "quality", "q", "field_completeness", 3),
    StudyMetric("extraneous_pct", "Extraneous output %", "quality", "s", "extraneous", 1),
    StudyMetric("key_accuracy", "Key accuracy", "quality", "q", "key_accuracy", 3),
)


def load_study() -> pd.DataFrame:
    """The study's two tables joined on model: one row per configuration."""
    try:
        results = pd.read_csv(RESULTS_CSV)
        json_table = pd.read_csv(JSON_CSV)
    except (OSError, pd.errors.ParserError) as exc:
        raise BenchError(f"the shipped study tables in {DATA_DIR} are unreadable ({exc}); reinstall bench") from exc
    extra = json_table.drop(columns=[c for c in ("tier", "json_parse_pct", "schema_pct") if c in json_table])
    return results.merge(extra, on="model", how="left")


def _norm(name: str) -> str:
    return name.strip().lower()


def match_study(run: RunSummary, study: pd.DataFrame) -> list[tuple[ConfigSummary, pd.Series]]:
    """Our plain-mode configurations paired with the study's rows by Ollama tag (case-insensitive).

    The shipped manifest spells ids as the study does; an entry may also name the study's row
    in `study_id`, and its `ollama_tag` is tried last.
    """
    by_name = {_norm(m): row for m, row in zip(study["model"], (r for _, r in study.iterrows()))}
    models = model_entries(run.meta)
    pairs = []
    for c in run.configs:
        if c.mode != "plain":
            continue
        entry = models.get(c.config_id) if isinstance(models.get(c.config_id), dict) else {}
        for name in (c.config_id, entry.get("study_id"), entry.get("ollama_tag")):
            if isinstance(name, str) and _norm(name) in by_name:
                pairs.append((c, by_name[_norm(name)]))
                break
    return pairs


def _num_cell(value: float | None, digits: int, thousands: bool = False) -> Cell:
    if value is None or pd.isna(value):
        return missing("not available")
    text = f"{value:,.{digits}f}" if thousands else f"{value:.{digits}f}"
    return Cell(text, float(value))


def _study_sections(run: RunSummary, study: pd.DataFrame, label: str, suffix: str = "") -> list[Section]:
    pairs = match_study(run, study)
    if not pairs:
        raise BenchError(
            f"{run.path}: none of its configurations is in the study's table "
            f"(the study has {', '.join(study['model'][:4])} …; ids match case-insensitively, or set "
            "study_id in the manifest entry)"
        )
    rows, per_metric = [], {m.column: [] for m in METRICS}
    for c, srow in pairs:
        for m in METRICS:
            ours, what = m.ours(c)
            theirs = srow.get(m.column)
            theirs = None if theirs is None or pd.isna(theirs) else float(theirs)
            thousands = m.column in ("latency_ms", "ttft_ms")
            if ours is None or theirs is None:
                delta_cell, ratio_cell = missing("needs both figures"), missing("needs both figures")
                why = "twin: timing only" if c.twin and m.kind == "quality" else ""
                ours_cell = _num_cell(ours, m.digits, thousands)
                if why:
                    ours_cell.detail = why
            else:
                delta = ours - theirs
                ratio = ours / theirs if theirs else None
                per_metric[m.column].append((delta, ratio))
                ours_cell = _num_cell(ours, m.digits, thousands)
                delta_cell = Cell(f"{delta:+,.{m.digits}f}", delta)
                ratio_cell = Cell(f"{ratio:.2f}×", ratio) if ratio is not None else missing("study figure is 0")
            ours_cell.detail = ours_cell.detail or "; ".join(x for x in (what, m.ours_note) if x)
            rows.append(
                [
                    Cell(c.label, c.label),
                    Cell(m.label, m.label, "timing: hardware undisclosed" if m.kind == "timing" else ""),
                    ours_cell,
                    _num_cell(theirs, m.digits, thousands),
                    delta_cell,
                    ratio_cell,
                ]
            )
    summary_rows = []
    for m in METRICS:
        found = per_metric[m.column]
        if not found:
            continue
        ratios = [r for _, r in found if r is not None]
        deltas = [d for d, _ in found]
        summary_rows.append(
            [
                Cell(m.label, m.label, "timing: hardware undisclosed" if m.kind == "timing" else ""),
                Cell(str(len(found)), len(found)),
                Cell(f"{statistics.median(deltas):+,.{m.digits}f}", statistics.median(deltas)),
                Cell(
                    f"{statistics.median(ratios):.2f}×",
                    statistics.median(ratios),
                    f"range {min(ratios):.2f}–{max(ratios):.2f}, n={len(ratios)}",
                )
                if ratios
                else missing("study figures are 0"),
            ]
        )
    summary = Table(
        f"study_summary{suffix}",
        "Per metric, over the matched configurations",
        [
            Column("metric", "Metric"),
            Column("n_configs", "Configurations"),
            Column("median_delta", "Median Δ (ours − study)"),
            Column("median_ratio", "Median ratio (ours / study)"),
        ],
        summary_rows,
        note=HARDWARE_NOTE,
    )
    detail = Table(
        f"study_detail{suffix}",
        "Per configuration and metric",
        [
            Column("config", "Configuration"),
            Column("metric", "Metric"),
            Column("ours", "Ours", "quality: mean over scored outputs; timing: mean over requests"),
            Column("study", "Study"),
            Column("delta", "Δ (ours − study)"),
            Column("ratio", "Ratio (ours / study)"),
        ],
        rows,
        note=HARDWARE_NOTE,
    )
    matched = {c.config_id for c, _ in pairs}
    unmatched = sorted({c.label for c in run.configs if c.config_id not in matched})
    blocks = [
        Note(HARDWARE_NOTE, "warn"),
        Paragraph(
            f"{len(pairs)} of our configuration rows matched the study's {len(study)} by model tag. "
            "Our JSON parse % is the strict rate; the study did not define its own. Our timing figures here "
            "are means (the study printed averages); the run's own report gives medians with their spread."
        ),
    ]
    if unmatched:
        blocks.append(Note("Not in the study: " + ", ".join(unmatched)))
    for note in run.notes:
        blocks.append(Note(note, "warn"))
    blocks += [summary, detail]
    return [Section(f"study-{run.path.name}", f"{label} vs the published study", blocks)]


def compare_with_study(runs: list[RunSummary], study: pd.DataFrame | None = None) -> Document:
    study = load_study() if study is None else study
    sections = []
    for i, run in enumerate(runs):
        sections += _study_sections(run, study, run.host_label, suffix=f"_{i + 1}" if len(runs) > 1 else "")
    builders = [lambda _ctx, s=s: s for s in sections]
    return assemble("bench compare — against the published study", [HARDWARE_NOTE], builders, None)


def compare_paths_with_study(paths: list[str | Path]) -> Document:
    return compare_with_study([load_run(p) for p in paths])
