"""`bench compare RUN_A RUN_B …` and `bench compare RUN --reference study`."""

from __future__ import annotations

from pathlib import Path

import click

from bench.errors import BenchError
from reports.aggregate import load_run
from reports.compare import compare_runs
from reports.cost import CostOptions, compare_cost_section, cost_options
from reports.output import DEFAULT_FORMATS, parse_formats, write_document
from reports.study import compare_with_study


@click.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--reference",
    type=click.Choice(["study"]),
    default=None,
    help="Set the run(s) beside a published reference instead of each other ('study': the study's tables).",
)
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
    help="Directory to write into (default: FIRST_RUN/compare, or FIRST_RUN/compare-study).",
)
@cost_options
def command(runs: tuple[Path, ...], reference: str | None, formats: str, out_dir: Path | None, cost: CostOptions):
    """Compare runs of the same configurations on different machines: ratios with bootstrap 95% CIs.

    The first run is the baseline. With --reference study, each run is set beside the published
    study's tables instead.
    """
    chosen = parse_formats(formats)
    if reference is None and len(runs) < 2:
        raise BenchError("bench compare needs two or more runs, or one run with --reference study")
    loaded = [load_run(path) for path in runs]
    if reference == "study":
        doc, stem, default_out = compare_with_study(loaded), "compare_study", loaded[0].path / "compare-study"
    else:
        doc, stem, default_out = compare_runs(loaded), "compare", loaded[0].path / "compare"
    doc.sections.append(compare_cost_section(loaded, cost))
    written = write_document(doc, out_dir or default_out, chosen, stem=stem)
    for path in written:
        click.echo(f"wrote {path}")
