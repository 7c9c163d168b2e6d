"""`bench export RUN_DIR -o FILE`: one self-describing archive of a run, to share or keep."""

from __future__ import annotations

from pathlib import Path

import click

from bench.archive import export_run


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.2f} MB" if n_bytes >= 1e5 else f"{n_bytes / 1e3:.1f} kB"


@click.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(path_type=Path),
    default=None,
    help="Archive to write: .zip (default: ./<run name>.zip), .tar, .tar.gz or .tgz.",
)
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
def command(run_dir: Path, output: Path | None, force: bool):
    """Write RUN_DIR as one archive: Parquet tables of requests, scores and telemetry, run.json, every other
    file of the run, and a manifest with each member's sha256. `bench import` restores it."""
    out = output or Path(f"{Path(run_dir).resolve().name}.zip")
    result = export_run(run_dir, out, force=force)
    tables = ", ".join(f"{n} {name.removesuffix('.jsonl')}" for name, n in result.rows.items()) or "no tables"
    click.echo(f"exported {run_dir} to {result.path} ({_size(result.bytes)}): {tables}; {len(result.files)} other file(s)")
    for line in result.skipped:
        click.echo(f"  left out: {line}")
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
