"""`bench import FILE [--into DIR]`: restore an exported run as a run directory that report and compare read."""

from __future__ import annotations

from pathlib import Path

import click

from bench.archive import import_archive


@click.command("import")
@click.argument("archive", type=click.Path(path_type=Path))
@click.option(
    "--into",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs"),
    show_default=True,
    help="Folder to restore the run into (as INTO/<run name>).",
)
def command(archive: Path, into: Path):
    """Check every member of ARCHIVE against its manifest, then restore it as INTO/<run name>/."""
    result = import_archive(archive, into)
    tables = ", ".join(f"{n} {name.removesuffix('.jsonl')}" for name, n in result.rows.items()) or "no tables"
    click.echo(f"imported {archive} as {result.path}: {tables}; {len(result.files)} other file(s)")
    click.echo(f"  next: bench report {result.path}   or   bench compare YOUR_RUN {result.path}")
