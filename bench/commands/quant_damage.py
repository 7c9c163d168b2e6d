"""`bench quant-damage QUANT --against REFERENCE`: how far a quantization moves next-token distributions.

Both arguments are manifest ids or GGUF paths of the same model (same vocabulary). Prints the KL
divergence KL(P_ref || P_quant) per token (mean ± standard error, median, p99, max), the share of
positions whose top token agrees and both perplexities, over the reference text shipped in
bench/data/ (see bench/quant_damage.py for the chunking). With --run DIR the result is stored in
DIR/quant_damage.json (and `bench report DIR` shows it beside the ROUGE-L difference of the two
configurations, when that run scored both).
"""

from __future__ import annotations

import os
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.errors import BenchError


@click.command("quant-damage")
@click.argument("quant")
@click.option("--against", "reference", required=True, help="The reference file (id or GGUF path), e.g. the Q8_0 of the same model.")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path),
              help="A run directory: store the result in its quant_damage.json and compare with its ROUGE-L scores.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also store the result in this quant_damage.json file.")
@click.option("--n-ctx", type=click.IntRange(16), default=512, show_default=True,
              help="Chunk length in tokens (llama-perplexity's -c); the second half of each chunk is scored.")
@click.option("--chunks", "max_chunks", type=click.IntRange(1), help="Score at most this many chunks.")
@click.option("--text", "text_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Another reference text (UTF-8) instead of the shipped one.")
@click.option("--n-gpu-layers", type=int, help="Layers to offload (default: all when the build can offload, else 0).")
@click.option("--threads", "n_threads", type=click.IntRange(1), help="CPU threads (default: every physical core).")
@click.option("--flash-attn", type=click.Choice(["on", "off"]), default="off", show_default=True)
@click.option("--no-download", is_flag=True, help="Use only files already on disk.")
@click.pass_context
def command(ctx, quant, reference, run_dir, json_path, n_ctx, max_chunks, text_path, n_gpu_layers, n_threads,
            flash_attn, no_download):
    """Compare QUANT's next-token distributions with those of --against (KL divergence, top-token agreement, PPL)."""
    from bench import quant_damage as qd

    console = Console(highlight=False, soft_wrap=True)
    root = ctx.find_root().obj
    manifest_path = root.manifest_path if root else None
    if run_dir is not None and not run_dir.is_dir():
        raise BenchError(f"--run {run_dir}: not a directory")
    quant_side = _side(quant, manifest_path, download=not no_download, console=console)
    ref_side = _side(reference, manifest_path, download=not no_download, console=console)
    if n_gpu_layers is None:
        import llama_cpp

        n_gpu_layers = -1 if llama_cpp.llama_supports_gpu_offload() else 0
    if n_threads is None:
        n_threads = _physical_cores()
    console.print(f"comparing {escape(quant_side.label)} against {escape(ref_side.label)} over "
                  f"{escape(str(text_path or qd.REFERENCE_TEXT))} (n_ctx {n_ctx}) …")
    result = qd.compute_quant_damage(
        quant_side, ref_side, text_path=text_path, n_ctx=n_ctx, max_chunks=max_chunks, n_gpu_layers=n_gpu_layers,
        n_threads=n_threads, flash_attn=flash_attn == "on", progress=lambda line: console.print("  " + line),
    )
    rouge = _rouge_difference(run_dir, result.quant_id, result.reference_id) if run_dir else None
    console.print(_table(result, rouge))
    for target in [p for p in (json_path, run_dir / "quant_damage.json" if run_dir else None) if p is not None]:
        qd.store(result, target)
        console.print(f"stored in {escape(str(target))}")


def _side(item: str, manifest_path, *, download: bool, console: Console):
    from bench.quant_damage import ModelSide

    path = Path(item).expanduser()
    if item.endswith(".gguf") or path.is_file():
        if not path.is_file():
            raise BenchError(f"{item}: no such GGUF file")
        return ModelSide(path.name, path.resolve())
    from bench.fetch import resolve_model
    from bench.manifest import load_manifest

    manifest = load_manifest(manifest_path)
    resolved = resolve_model(manifest.get(item), manifest, download=download,
                             progress=lambda msg: console.print(escape(msg)))
    return ModelSide(item, Path(resolved.path), resolved.sha256)


def _rouge_difference(run_dir: Path, quant_id: str, reference_id: str) -> tuple[float, float, int, int] | str:
    """(mean ROUGE-L quant, reference, n quant, n reference), or why there is none."""
    from reports.aggregate import load_run

    try:
        run = load_run(run_dir)
    except BenchError as exc:
        return f"no ROUGE-L comparison: {exc}"
    found = {}
    for c in run.configs:
        if c.mode == "plain" and c.config_id in (quant_id, reference_id):
            found[c.config_id] = c.q("rougeL")
    if quant_id in found and reference_id in found and found[quant_id].mean is not None \
            and found[reference_id].mean is not None:
        return found[quant_id].mean, found[reference_id].mean, found[quant_id].n, found[reference_id].n
    missing = [i for i in (quant_id, reference_id) if i not in found or found[i].mean is None]
    return f"no ROUGE-L comparison: {run_dir} has no scored outputs of {', '.join(missing)}"


def _table(result, rouge) -> Table:
    kld, top, ppl = result.kld, result.same_top, result.ppl
    table = Table(title=f"{result.quant_id} against {result.reference_id}: {result.n_tokens} scored tokens in "
                        f"{result.n_chunks} chunk(s) of {result.n_ctx}", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("KLD mean (nats)", f"{kld['mean']:.6f} ± {kld['sem'] or 0:.6f} (sem)")
    table.add_row("KLD median / p90 / p99 / max", f"{kld['median']:.6f} / {kld['p90']:.6f} / {kld['p99']:.6f} / {kld['max']:.6f}")
    table.add_row("same top token", f"{100 * top['share']:.2f} ± {100 * (top['sem'] or 0):.2f} %")
    table.add_row(f"PPL {result.quant_id}", f"{ppl['quant']:.4f} ± {ppl['quant_sem'] or 0:.4f}")
    table.add_row(f"PPL {result.reference_id}", f"{ppl['reference']:.4f} ± {ppl['reference_sem'] or 0:.4f}")
    table.add_row("ln(PPL quant / PPL ref)", f"{ppl['ln_ratio']:+.6f} ± {ppl['ln_ratio_sem'] or 0:.6f}")
    if isinstance(rouge, tuple):
        q, r, nq, nr = rouge
        table.add_row("ROUGE-L quant − ref", f"{q - r:+.4f} ({q:.4f}, n={nq} vs {r:.4f}, n={nr})")
    elif isinstance(rouge, str):
        table.add_row("ROUGE-L quant − ref", rouge)
    return table


def _physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except Exception:  # noqa: BLE001
        return os.cpu_count() or 1
