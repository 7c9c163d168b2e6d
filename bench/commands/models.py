"""`bench models`: the manifest as a table (or JSON), with whether each model is on disk."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from bench.errors import BenchError
from bench.fetch import GIB, hub_cache_dir, is_cached, part_names
from bench.lockfile import Lockfile, lock_path_for
from bench.manifest import KNOWN_QUANTS, KNOWN_TIERS, load_manifest


def _size_bytes(entry, lock: Lockfile) -> int | None:
    """The manifest's size, else the size recorded in gguf.lock when the file was first fetched."""
    if entry.size_bytes:
        return entry.size_bytes
    try:
        records = [lock.record(entry.id, name) for name in part_names(entry)]
    except BenchError:  # an unreadable lock must not stop the listing
        return None
    if records and all(r is not None and r.size_bytes > 0 for r in records):
        return sum(r.size_bytes for r in records)
    return None


def _canonical(value: str | None, known) -> str | None:
    return next((k for k in known if k.lower() == value.lower()), value) if value else None


@click.command("models")
@click.option("--tier", type=click.Choice(KNOWN_TIERS, case_sensitive=False), help="Only this tier.")
@click.option("--quant", type=click.Choice(KNOWN_QUANTS, case_sensitive=False), help="Only this quant.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.pass_context
def command(ctx, tier, quant, as_json):
    """List the models in the manifest, their size and whether they are downloaded."""
    manifest = load_manifest(ctx.find_root().obj.manifest_path if ctx.find_root().obj else None)
    tier, quant = _canonical(tier, KNOWN_TIERS), _canonical(quant, KNOWN_QUANTS)
    entries = [e for e in manifest.entries if (not tier or e.tier == tier) and (not quant or e.quant == quant)]
    lock = Lockfile(lock_path_for(manifest))
    rows = [(entry, _size_bytes(entry, lock), is_cached(entry)) for entry in entries]

    if as_json:
        listing = []
        for entry, size, cached in rows:
            item = entry.to_dict()
            item["size_bytes"] = size
            item["cached"] = cached
            listing.append(item)
        click.echo(json.dumps(listing, indent=2))
        return

    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 140)  # piped output: don't fold ids into two lines
    table = Table(title=f"Models in {manifest.path}", title_justify="left")
    table.add_column("id", no_wrap=True)
    table.add_column("tier")
    table.add_column("params (B)", justify="right")
    table.add_column("arch")
    table.add_column("quant")
    table.add_column("size (GiB)", justify="right")
    table.add_column("Ollama tag", no_wrap=True)
    table.add_column("cached")
    for entry, size, cached in rows:
        table.add_row(
            entry.id,
            entry.tier,
            f"{entry.params_b:g}",
            entry.arch,
            entry.quant,
            f"{size / GIB:.2f}" if size else "?",
            entry.ollama_tag or "",
            "[green]yes[/green]" if cached else "no",
        )
    console.print(table)
    console.print(
        f"{len(rows)} models; cache: {hub_cache_dir()}; size '?' = unknown until fetched "
        f"(bench fetch ID)"
    )
