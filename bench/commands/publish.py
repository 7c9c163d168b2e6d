"""`bench publish RUN_DIR --repo OWNER/NAME`: upload a run's export to a Hugging Face dataset repo."""

from __future__ import annotations

from pathlib import Path

import click

from bench.hubshare import publish


@click.command("publish")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--repo", "repo_id", required=True, metavar="OWNER/NAME", help="Dataset repo to publish to (created if missing).")
@click.option("--private", is_flag=True, help="Create the repo private (an existing repo keeps its visibility).")
def command(run_dir: Path, repo_id: str, private: bool):
    """Export RUN_DIR (as `bench export` does) and upload it as runs/<run name>.zip to the dataset repo.

    The token comes from HF_TOKEN or a cached `hf auth login`; it is never written or printed.
    """
    result = publish(run_dir, repo_id, private=private)
    click.echo(f"published {run_dir} to {result.repo_id} as {result.path_in_repo} ({result.bytes / 1e3:.1f} kB)")
    click.echo(f"  {result.url}")
    click.echo(f"  others get it with: bench pull {result.repo_id} --run {Path(result.path_in_repo).stem}")
