"""`bench fetch`: download model files into the Hugging Face cache and verify their sha256."""

from __future__ import annotations

import click
from rich.console import Console
from rich.markup import escape

from bench.errors import BenchError
from bench.fetch import GIB, ResolvedModel, fetch_model, is_cached
from bench.manifest import KNOWN_QUANTS, KNOWN_TIERS, load_manifest

_VERDICT = {
    "manifest": "matches the manifest",
    "lock": "matches gguf.lock",
    "lock-new": "recorded in gguf.lock",
}


def _summary(resolved: ResolvedModel, was_cached: bool, source: str) -> str:
    parts = f" ({len(resolved.parts)} parts)" if len(resolved.parts) > 1 else ""
    how = "downloaded" if not was_cached else ("installed package" if source == "package" else "already cached")
    return (
        f"[green]✓[/green] {escape(resolved.entry_id)}: {escape(resolved.path.name)}{parts} "
        f"{resolved.size_bytes / GIB:.2f} GiB, {how}; sha256 {resolved.sha256[:12]}… "
        f"{_VERDICT[resolved.verified_by]}"
    )


@click.command("fetch")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every study configuration (22 models, ~150 GiB).")
@click.option("--tier", type=click.Choice(KNOWN_TIERS, case_sensitive=False), help="Only this tier.")
@click.option("--quant", type=click.Choice(KNOWN_QUANTS, case_sensitive=False), help="Only this quant.")
@click.option("--force", is_flag=True, help="Download again even when cached (replaces a corrupted file).")
@click.pass_context
def command(ctx, ids, all_, tier, quant, force):
    """Download model GGUFs (by ID, --all, or --tier/--quant) into the Hugging Face cache.

    Honours HF_HOME, HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE. Each file's sha256 is checked against
    the manifest, or recorded in gguf.lock on first download and checked on every later use. A failing
    model is reported on one line and the others still download; the exit status is non-zero if any failed.
    """
    if not (ids or all_ or tier or quant):
        raise click.UsageError("name model ids, or use --all / --tier / --quant (list them with: bench models)")
    manifest = load_manifest(ctx.find_root().obj.manifest_path if ctx.find_root().obj else None)
    # Unknown ids are refused before anything downloads: a typo should not cost a 9 GB transfer first.
    entries = manifest.select(ids=ids, tier=tier, quant=quant, all_=all_)

    console = Console(highlight=False, soft_wrap=True)
    failed = 0
    for entry in entries:
        try:
            was_cached = not force and is_cached(entry)
            if not was_cached:
                console.print(f"fetching {escape(entry.id)} from {escape(entry.hf_repo or entry.package or '?')}")
            resolved = fetch_model(entry, manifest, progress=lambda msg: console.print(escape(msg)), force=force)
        except BenchError as exc:
            failed += 1
            click.echo(f"error: {exc}", err=True)
            continue
        console.print(_summary(resolved, was_cached, entry.source))

    if len(entries) > 1:
        console.print(f"{len(entries) - failed} of {len(entries)} models ready, {failed} failed")
    if failed:
        ctx.exit(2)
