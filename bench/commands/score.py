"""`bench score`: quality and JSON-reliability metrics for generated outputs."""

from __future__ import annotations

from pathlib import Path

import click

from bench import records
from bench.errors import ScoringError

MAX_BAD_LINES_SHOWN = 20


@click.command("score")
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.option(
    "-o", "--output", "output_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Where to write per-output metrics (default: INPUT's stem + .scores.jsonl; scores.jsonl in a run directory).",
)
@click.option(
    "--nli-model", default=None, metavar="NAME|PATH",
    help="NLI cross-encoder for factual consistency: a Hugging Face id or a local checkpoint directory "
    "(default: cross-encoder/nli-deberta-v3-xsmall; env BENCH_NLI_MODEL).",
)
@click.option("--no-nli", is_flag=True, help="Skip NLI factual consistency (factual_nli stays empty, never 0).")
@click.option("--no-embed", is_flag=True, help="Skip the embedding similarity to the reference (semantic_sim).")
def command(input_path: Path, output_path: Path | None, nli_model: str | None, no_nli: bool, no_embed: bool):
    """Score outputs: ROUGE, NLI factual consistency, fact coverage, length, JSON reliability.

    INPUT is a JSONL file with one object per line holding at least item_id, variant and output
    (other fields are carried through), or a run directory written by `bench profile` (its
    requests are scored into scores.jsonl there; shape-twin requests are skipped).
    """
    from rich.console import Console

    from bench.scorestage import score_jsonl, score_run_dir

    out = Console()
    err = Console(stderr=True)
    if input_path.is_dir():
        if not (input_path / records.RUN_META_FILE).is_file():
            raise ScoringError(f"{input_path}: a directory without {records.RUN_META_FILE} is not a run directory")
        summary = score_run_dir(
            input_path, nli_model=nli_model, no_nli=no_nli, no_embed=no_embed, console=err, output_path=output_path
        )
    else:
        summary = score_jsonl(
            input_path, output_path, nli_model=nli_model, no_nli=no_nli, no_embed=no_embed, console=err
        )
    print_summary(summary, out)


# (metric, header) per table; the unit comes from scoring.metrics.METRICS.
QUALITY_COLUMNS = (
    ("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"), ("rougeL", "ROUGE-L"), ("factual_nli", "Factual NLI"),
    ("contradiction_share", "Contradicted"), ("semantic_sim", "Semantic sim"), ("fact_coverage", "Fact coverage"),
    ("unsupported_numbers", "Unsupported nums"), ("n_words", "Words"), ("length_ok", "Length ok"),
    ("repetition", "Repetition"), ("refusal", "Refusal"), ("language_ok", "English"),
)
JSON_COLUMNS = (
    ("json_parse_strict", "Parse strict"), ("json_parse_lenient", "Parse lenient"), ("schema_ok", "Schema ok"),
    ("field_completeness", "Fields complete"), ("extraneous", "Extraneous"), ("key_accuracy", "Key accuracy"),
)
_UNIT_LABEL = {"fraction": "0–1", "%": "%", "count": "count", "words": "words"}


def _cell(row: dict, name: str, unit: str) -> str:
    value, n = row.get(name), row.get(f"{name}_n", 0)
    if value is None:
        return "—"
    if unit == "%":
        return f"{value:.1f}%\n{round(value * n / 100)}/{n}"
    sd = row.get(f"{name}_sd")
    digits = 1 if unit in ("count", "words") else 3
    return f"{value:.{digits}f}" + (f"\n±{sd:.{digits}f}" if sd is not None else "")


def aggregate_table(rows: list[dict], columns, title: str):
    """Metrics down, variants across: six variants fit a terminal, sixteen metrics would not."""
    from rich.table import Table

    from scoring.metrics import METRICS

    table = Table(title=title, title_justify="left", show_lines=True)
    table.add_column("Metric\nunit, better", no_wrap=True)
    for row in rows:
        level, _, fmt = str(row.get("variant")).partition("_")
        table.add_column(f"{level}\n{fmt}\nn={row['n']}", justify="right", no_wrap=True)
    for name, header in columns:
        info = METRICS[name]
        unit = _UNIT_LABEL.get(info.aggregate_unit, info.aggregate_unit)
        better = {"higher": " ↑", "lower": " ↓"}.get(info.direction, "")
        table.add_row(f"{header}\n{unit}{better}", *(_cell(row, name, info.aggregate_unit) for row in rows))
    return table


def print_summary(summary, console) -> None:
    if summary.aggregate:
        console.print(aggregate_table(summary.aggregate, QUALITY_COLUMNS, "Quality per variant"))
        json_rows = [row for row in summary.aggregate if str(row.get("variant", "")).endswith("_json")]
        if json_rows:
            console.print(aggregate_table(json_rows, JSON_COLUMNS, "JSON reliability per variant"))
    notes = [
        f"scored {summary.n_scored} outputs in {summary.elapsed_s:.1f} s -> {summary.output_path}",
        "cells: mean and ±sample sd over the variant's n outputs; %: share of outputs, k/n; ↑/↓: higher/lower is better",
        f"NLI model: {summary.nli_model or 'not computed'}; embedder: {summary.embedder or 'not computed'}",
    ]
    if summary.n_twins_skipped:
        notes.append(f"skipped {summary.n_twins_skipped} shape-twin requests (timing only, never scored)")
    for line in notes:
        console.print(line, highlight=False, soft_wrap=True)
    if summary.bad_rows:
        console.print(
            f"[yellow]skipped {len(summary.bad_rows)} malformed input{'s' if len(summary.bad_rows) > 1 else ''}:[/]",
            highlight=False,
        )
        for bad in summary.bad_rows[:MAX_BAD_LINES_SHOWN]:
            console.print(f"  {bad.where}: {bad.reason}", highlight=False, soft_wrap=True, markup=False)
        if len(summary.bad_rows) > MAX_BAD_LINES_SHOWN:
            console.print(f"  … and {len(summary.bad_rows) - MAX_BAD_LINES_SHOWN} more", highlight=False)
