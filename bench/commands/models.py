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
@click.option("--fit", is_flag=True, help="Predict each model's GPU memory and whether it fits this host's GPU.")
@click.option("--n-ctx", type=click.IntRange(1), default=4096, show_default=True, help="Context size for --fit.")
@click.option("--kv-type", default="f16", show_default=True, help="KV cache type for --fit (f16, q8_0, q4_0 …).")
@click.option("--gpu-memory", "gpu_memory_gib", type=click.FloatRange(0, min_open=True),
              help="For --fit: pretend this many GiB are free (another card) instead of asking NVML.")
@click.option("--gpu-index", type=click.IntRange(0), default=0, show_default=True, help="NVML index for --fit.")
@click.pass_context
def command(ctx, tier, quant, as_json, fit, n_ctx, kv_type, gpu_memory_gib, gpu_index):
    """List the models in the manifest, their size and whether they are downloaded."""
    manifest = load_manifest(ctx.find_root().obj.manifest_path if ctx.find_root().obj else None)
    tier, quant = _canonical(tier, KNOWN_TIERS), _canonical(quant, KNOWN_QUANTS)
    entries = [e for e in manifest.entries if (not tier or e.tier == tier) and (not quant or e.quant == quant)]
    if fit:
        _print_fit(entries, n_ctx, kv_type, gpu_memory_gib, gpu_index, as_json)
        return
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


def _print_fit(entries, n_ctx: int, kv_type: str, gpu_memory_gib: float | None, gpu_index: int, as_json: bool) -> None:
    """`--fit`: bench.vram's prediction per model against this host's free GPU memory."""
    from bench.vram import fit_rows, gpu_memory, kv_type_of

    kv_type_of(kv_type)  # an unknown type is one clear error before anything else
    if gpu_memory_gib is not None:
        free, where = int(gpu_memory_gib * GIB), f"{gpu_memory_gib:g} GiB (--gpu-memory)"
    else:
        memory = gpu_memory(gpu_index)
        free = memory.free_bytes
        where = (f"GPU {gpu_index}: {free / GIB:.2f} GiB free of {memory.total_bytes / GIB:.2f} GiB (NVML)"
                 if free is not None else f"no GPU memory figure ({memory.reason}); pass --gpu-memory GIB")
    rows = fit_rows(entries, n_ctx, kv_type, free)
    if as_json:
        click.echo(json.dumps([{
            "id": r.entry_id, "source": r.source, "free_bytes": free,
            "prediction": r.prediction.to_dict() if r.prediction else None,
            "fits": r.decision.fits if r.decision else None,
            "n_gpu_layers_that_fit": r.decision.n_gpu_layers if r.decision and r.decision.proceed else
            (0 if r.decision else None),
        } for r in rows], indent=2))
        return
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 140)
    table = Table(title=f"GPU memory at n_ctx {n_ctx}, KV {kv_type}: {where}", title_justify="left")
    for column in ("id", "needs (GiB)", "weights", "KV", "compute+overhead", "from", "fits"):
        table.add_column(column, justify="left" if column in ("id", "from", "fits") else "right", no_wrap=column == "id")
    for r in rows:
        p = r.prediction
        if p is None:
            table.add_row(r.entry_id, "?", "", "", "", r.source, "?")
            continue
        d = r.decision
        if d is None:
            verdict = "?"
        elif d.fits:
            verdict = "[green]yes[/green]"
        elif d.proceed:
            verdict = f"[yellow]partly: {d.n_gpu_layers}/{p.n_layers_total} layers[/yellow]"
        else:
            verdict = "[red]no[/red]"
        table.add_row(r.entry_id, f"{p.total_bytes / GIB:.2f}", f"{p.weights_bytes / GIB:.2f}", f"{p.kv_bytes / GIB:.2f}",
                      f"{(p.compute_bytes + p.overhead_bytes) / GIB:.2f}", r.source, verdict)
    console.print(table)
    console.print("needs = weights on the GPU + KV cache + compute buffers + CUDA overhead; a fit keeps a "
                  "margin of 5% (at least 0.25 GiB) free; 'manifest' rows are estimates from the shape and size.")
