"""`bench twin ID`: write a random-weight twin of a manifest model (its exact shapes, real quant types)."""

from __future__ import annotations

from pathlib import Path

import click

from bench.errors import BenchError


@click.command("twin")
@click.argument("model_id")
@click.option("--quant", "quants", multiple=True, type=click.Choice(["Q4_K_M", "Q8_0"]),
              help="Quant type (repeat for both); default: the model's own.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the twin (one --quant only); default: the twin cache.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Twin cache (default: $BENCH_TWIN_CACHE or ~/.cache/bench/twins).")
@click.option("--threads", type=click.IntRange(1), help="Quantizer threads (default: every core).")
@click.option("--force", is_flag=True, help="Rewrite even if a twin with this shape is on disk.")
@click.pass_context
def command(ctx, model_id, quants, out, cache_dir, threads, force):
    """Write a random-weight twin of MODEL_ID for timing without the real weights.

    The twin has every tensor of the real architecture at the manifest's shapes, random values,
    and is quantized by llama.cpp's own quantizer, so its size and speed match the real file's.
    It is marked in its metadata (bench.twin = true, bench.twin_of = MODEL_ID) and by bench in
    every record; twins are never quality-scored.
    """
    from bench import twin
    from bench.manifest import load_manifest

    root = ctx.find_root().obj
    manifest = load_manifest(root.manifest_path if root else None)
    entry = manifest.get(model_id)
    quants = list(quants) or [entry.quant]
    if any(q not in twin.TWIN_QUANTS for q in quants):
        raise BenchError(f"{model_id} is {entry.quant}; twins are Q4_K_M or Q8_0: pass --quant")
    if out is not None and len(quants) > 1:
        raise click.UsageError("--out names one file: give one --quant")
    if entry.shape is None:
        raise BenchError(f"{model_id}: the manifest entry has no [model.shape]; a twin needs the exact architecture")
    out_paths = {quants[0]: out} if out is not None else None
    ids = twin.sibling_ids(manifest, entry, quants)
    results = twin.make_twins(entry.id, entry.arch, entry.shape, quants, out_paths=out_paths, cache_dir=cache_dir,
                              nthread=threads, force=force, progress=lambda m: click.echo(m), ids_by_quant=ids)
    for r in results:
        real = manifest.get(ids[r.quant]).size_bytes if ids[r.quant] != entry.id or entry.quant == r.quant else None
        vs = f"; the real file is {real / 2**30:.3f} GiB ({r.size_bytes / real:.4f}x)" if real else ""
        click.echo(f"twin of {r.model_id} at {r.quant}: {r.path} ({r.size_bytes / 2**30:.3f} GiB"
                   f"{', reused' if r.reused else ''}){vs}")
