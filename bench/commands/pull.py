"""`bench pull OWNER/NAME [--into DIR] [--run NAME]`: download published runs and import them for comparison."""

from __future__ import annotations

from pathlib import Path

import click

from bench.hubshare import pull


@click.command("pull")
@click.argument("repo_id", metavar="OWNER/NAME")
@click.option(
    "--into",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs"),
    show_default=True,
    help="Folder to import the runs into (as INTO/<run name>).",
)
@click.option("--run", "runs", multiple=True, metavar="NAME", help="Only this run (repeatable); default: every run in the repo.")
def command(repo_id: str, into: Path, runs: tuple[str, ...]):
    """Download the runs published in the dataset repo OWNER/NAME and import each as INTO/<run name>/."""
    pulled = pull(repo_id, into, runs)
    imported = [p for p in pulled if not p.skipped]
    for p in pulled:
        click.echo(f"  {p.name}: skipped ({p.skipped})" if p.skipped else f"  {p.name}: imported as {p.path}")
    click.echo(f"pulled {len(imported)} run(s) from {repo_id} into {into} ({len(pulled) - len(imported)} already here)")
    if pulled:
        click.echo(f"  next: bench compare YOUR_RUN {' '.join(str(p.path) for p in pulled)}")
