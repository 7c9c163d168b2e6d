"""`bench report RUN_DIR`: tables, recommendations, findings and plots for one run."""

from __future__ import annotations

from pathlib import Path

import click

from reports.aggregate import load_run
from reports.cost import CostOptions, cost_options, with_cost_section
from reports.output import DEFAULT_FORMATS, parse_formats, write_document
from reports.report import SECTIONS, build_report


@click.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "formats",
    default=",".join(DEFAULT_FORMATS),
    show_default=True,
    help="Comma-separated output formats: md, html, csv.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory to write into (default: RUN_DIR/report).",
)
@click.option("--no-plots", is_flag=True, help="Skip drawing the figures (faster).")
@cost_options
def command(run_dir: Path, formats: str, out_dir: Path | None, no_plots: bool, cost: CostOptions):
    """Aggregate RUN_DIR per configuration: the study's tables plus energy, memory and token pacing."""
    chosen = parse_formats(formats)
    run = load_run(run_dir)
    doc = build_report(run, with_plots=not no_plots, sections=with_cost_section(SECTIONS, cost))
    out = out_dir or run.path / "report"
    written = write_document(doc, out, chosen, stem="report")
    for note in run.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"report for {run.path} ({len(run.configs)} configuration rows, {len(run.failed)} failed):")
    for path in written:
        if path.suffix != ".png":
            click.echo(f"  wrote {path}")
    pngs = [p for p in written if p.suffix == ".png"]
    if pngs:
        click.echo(f"  wrote {len(pngs)} plot(s) under {pngs[0].parent}")
