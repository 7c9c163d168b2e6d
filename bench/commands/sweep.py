"""`bench sweep`: prefill and decode rates over a grid of settings and KV depths, as llama-bench -d.

Every combination of the listed settings is a configuration; each is loaded once per repetition
(in its own child process) and measures every depth. Records go to `sweep.jsonl` in a run
directory; `bench report DIR` draws decode rate against depth. Exit status: 0 when every load
worked, 1 when any failed (recorded, the sweep went on), 130 when interrupted, 2 for bad input.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

import click
from click.core import ParameterSource
from rich.console import Console
from rich.markup import escape

from bench import __version__, records
from bench.errors import BenchError, RunDirError
from bench.rundir import RunDir, new_run_dir
from bench.sweep.grid import FLASH_ATTN_VALUES, ORDERS, GridError, parse_choice_list, parse_int_list, parse_kv_types

RUN_KIND = "sweep"
_LOCAL_PREFIX = "file:"


@click.command("sweep")
@click.argument("ids", nargs=-1)
@click.option("-d", "--depth", "depth", default="0", show_default=True,
              help="KV depths: tokens already in the cache before each timed test (e.g. 0,512,2048,8192 or 0-8192+2048).")
@click.option("-p", "--n-prompt", type=click.IntRange(1), default=512, show_default=True, help="Prefill tokens per test.")
@click.option("-n", "--n-gen", type=click.IntRange(2), default=128, show_default=True, help="Generated tokens per test.")
@click.option("--flash-attn", default="auto", show_default=True, help="Comma list of on, off, auto.")
@click.option("--kv-type", default="f16", show_default=True, help="KV cache types (K and V), e.g. f16,q8_0,q4_0.")
@click.option("--n-batch", default="2048", show_default=True, help="Logical batch sizes (list/range syntax).")
@click.option("--n-ubatch", default="512", show_default=True, help="Micro-batch sizes (list/range syntax).")
@click.option("--threads", "threads", default=None, help="CPU thread counts (default: every physical core).")
@click.option("--n-gpu-layers", default=None,
              help="Layers to offload (-1 = all; default -1 on GPU runs, 0 on CPU runs); list/range syntax.")
@click.option("--reps", type=click.IntRange(1), default=3, show_default=True, help="Repetitions of every test.")
@click.option("--delay", "delay_s", type=click.FloatRange(0.0), default=0.0, show_default=True,
              help="Seconds to pause between tests (lets the GPU cool; recorded).")
@click.option("--order", type=click.Choice(ORDERS), default="random", show_default=True,
              help="random: configurations and depths shuffled per repetition (seeded); grid: as listed.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the order and of the random tokens.")
@click.option("--allow-partial", is_flag=True,
              help="When a configuration does not fit in free GPU memory, offload the layers that fit instead of refusing it.")
@click.option("--device", type=click.Choice(["auto", "gpu", "cpu"]), default="auto", show_default=True)
@click.option("--gpu", "gpu_flag", is_flag=True, help="Same as --device gpu.")
@click.option("--cpu", "cpu_flag", is_flag=True, help="Same as --device cpu.")
@click.option("--no-warmup", is_flag=True, help="Skip the uncounted warm-up after each load.")
@click.option("--sample-hz", type=click.FloatRange(0.0), default=10.0, show_default=True,
              help="Telemetry samples per second (0 = off).")
@click.option("--gpu-index", type=click.IntRange(0), default=0, show_default=True)
@click.option("--no-download", is_flag=True, help="Use only model files already on disk.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Write the sweep into exactly this directory (default: runs/<UTC time>-<host>/).")
@click.option("--resume", type=click.Path(file_okay=False, path_type=Path),
              help="Finish an interrupted sweep: its options, skipping what it recorded.")
@click.pass_context
def command(ctx, ids, depth, n_prompt, n_gen, flash_attn, kv_type, n_batch, n_ubatch, threads, n_gpu_layers,
            reps, delay_s, order, seed, allow_partial, device, gpu_flag, cpu_flag, no_warmup, sample_hz, gpu_index,
            no_download, out, resume):
    """Sweep settings x KV depths for models (IDs from the manifest, or GGUF paths; default: the embedded model).

    \b
    Lists use llama-bench's syntax: 0,512,2048 or 0-8192+2048 or 1-16*2.
    Example: bench sweep llama3.1:8b-q4_K_M -d 0,2048,8192 --flash-attn on,off --kv-type f16,q8_0,q4_0
    """
    from bench.sweep.runner import SweepOptions

    if gpu_flag and cpu_flag:
        raise click.UsageError("--gpu and --cpu contradict each other")
    if gpu_flag or cpu_flag:
        device = "gpu" if gpu_flag else "cpu"
    root = ctx.find_root().obj
    manifest_path = root.manifest_path if root else None
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = max(console.width, 160)  # piped output: keep table rows on one line
    if resume is not None:
        given = [p.name for p in ctx.command.params
                 if p.name not in ("resume", "no_download", "sample_hz")
                 and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE]
        if given or ids:
            raise click.UsageError("--resume keeps the sweep's own models and options; drop "
                                   + ", ".join(["IDS"] * bool(ids) + [f"--{g.replace('_', '-')}" for g in given]))
        code = SweepCommand(console).resume(resume, manifest_path, download=not no_download)
        ctx.exit(code)

    try:
        depths = parse_int_list(depth, name="--depth", minimum=0)
        axes = {
            "flash_attn": parse_choice_list(flash_attn, FLASH_ATTN_VALUES, name="--flash-attn"),
            "kv_type": parse_kv_types(kv_type),
            "n_batch": parse_int_list(n_batch, name="--n-batch", minimum=1),
            "n_ubatch": parse_int_list(n_ubatch, name="--n-ubatch", minimum=1),
            "n_threads": parse_int_list(threads, name="--threads", minimum=1) if threads else None,
            "n_gpu_layers": parse_int_list(n_gpu_layers, name="--n-gpu-layers", allow_negative=True)
            if n_gpu_layers else None,
        }
    except GridError as exc:
        raise click.UsageError(str(exc)) from None
    options = SweepOptions(
        depths=depths, axes=axes, n_prompt=n_prompt, n_gen=n_gen, reps=reps, order=order, seed=seed,
        delay_s=delay_s, warmup=not no_warmup, allow_partial=allow_partial, device=device, sample_hz=sample_hz,
        gpu_index=gpu_index, download=not no_download,
    )
    code = SweepCommand(console).start(list(ids), options, out, manifest_path)
    ctx.exit(code)


class SweepCommand:
    def __init__(self, console: Console):
        self.console = console

    # -- entry points --------------------------------------------------------------------------

    def start(self, ids: list[str], options, out: Path | None, manifest_path) -> int:
        from bench.manifest import load_manifest

        manifest = load_manifest(manifest_path)
        models = _models(ids, manifest)
        device = self._plan_device(options)
        options.device = device.device
        if options.axes["n_threads"] is None:
            options.axes["n_threads"] = [_physical_cores()]
        if options.axes["n_gpu_layers"] is None or device.device == "cpu":
            options.axes["n_gpu_layers"] = [device.n_gpu_layers]
        run = self._new_run(out)
        meta = self._meta(run, options, models, manifest, device)
        run.write_meta(meta)
        return self._run(run, meta, options, models, manifest)

    def resume(self, path: Path, manifest_path, download: bool) -> int:
        from bench.manifest import load_manifest
        from bench.sweep.runner import SweepOptions

        run = RunDir.open(path)
        meta = run.meta()
        if meta.get("kind") != RUN_KIND:
            raise RunDirError(f"{path}: not a sweep run directory (resume a profile run with bench profile --resume)")
        options = records.from_dict(SweepOptions, meta.get("options", {}))
        options.download = download
        manifest_file = meta.get("manifest_path")
        manifest = load_manifest(manifest_file if manifest_file and Path(manifest_file).exists() else manifest_path)
        models = {}
        for model_id in meta.get("model_ids", []):
            entry = (meta.get("models") or {}).get(model_id) or {}
            local = "source" not in entry and entry.get("path")
            models[model_id] = Path(entry["path"]) if local else manifest.get(model_id)
        self._plan_device(options)
        meta["status"] = "running"
        meta.setdefault("sessions", []).append({"started_utc": _utc(), "argv": sys.argv[1:]})
        run.write_meta(meta)
        self.console.print(f"resuming {escape(str(run.path))}")
        return self._run(run, meta, options, models, manifest)

    # -- the run -------------------------------------------------------------------------------

    def _run(self, run: RunDir, meta: dict, options, models: dict, manifest) -> int:
        from bench.sweep.grid import SweepAxes, expand_grid, plan_blocks
        from bench.sweep.runner import ResolvedFile, SweepInterrupted, SweepRunner

        axes = SweepAxes(**{k: tuple(v) for k, v in options.axes.items()})
        grid = expand_grid(list(models), axes)
        for note in grid.skipped:
            self.console.print(f"[yellow]skipped[/yellow] {escape(note)}")
        blocks = plan_blocks(grid.configs, options.depths, options.reps, options.order, options.seed)
        n_tests = sum(len(b.depths) for b in blocks)
        self.console.print(
            f"sweep: {len(grid.configs)} configuration(s) x {len(options.depths)} depth(s) x {options.reps} rep(s) "
            f"= {n_tests} tests, order {options.order} (seed {options.seed}); run directory: {escape(str(run.path))}"
        )
        run.log("command: bench " + " ".join(sys.argv[1:]))

        def resolve(model_id: str) -> ResolvedFile:
            source = models[model_id]
            if isinstance(source, Path):
                return ResolvedFile(str(source), source.stat().st_size)
            from bench.fetch import resolve_model

            resolved = resolve_model(source, manifest, download=options.download,
                                     progress=lambda msg: self.console.print(escape(msg)))
            return ResolvedFile(str(resolved.path), resolved.size_bytes, resolved.sha256)

        gpu = _gpu_facts(meta.get("hardware", {}), options.gpu_index) if options.device == "gpu" else {}
        runner = SweepRunner(run, options, resolve, _ConsoleDisplay(self.console, n_tests),
                             on_gpu=options.device == "gpu", host=socket.gethostname(),
                             gpu_uuid=gpu.get("uuid"), gpu_name=gpu.get("name"))
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        interrupted = False
        try:
            outcomes = runner.run_blocks(blocks)
        except (SweepInterrupted, KeyboardInterrupt):
            interrupted = True
            outcomes = []
        finally:
            signal.signal(signal.SIGTERM, previous)
        failed = [r for r in outcomes if r.status != "ok"]
        meta["finished_utc"] = _utc()
        meta["status"] = "interrupted" if interrupted else ("failed" if failed else "completed")
        run.write_meta(meta)
        self._summary(run)
        where = escape(str(run.path))
        if interrupted:
            self.console.print(f"[yellow]interrupted[/yellow]: everything measured is kept in {where}; "
                               f"resume with: bench sweep --resume {where}")
            return 130
        if failed:
            self.console.print(f"[red]{len(failed)} load(s) failed[/red] (recorded; see the table and {where}/log.txt)")
        self.console.print(f"report: bench report {where}")
        return 1 if failed else 0

    def _summary(self, run: RunDir) -> None:
        from rich.table import Table

        from reports.sweep import sweep_summary_frame

        frame = sweep_summary_frame(run.path)
        if frame is None or frame.empty:
            return
        table = Table(title="Sweep: median over repetitions", title_justify="left")
        table.add_column("configuration", overflow="fold")
        for column in ("depth", "decode (tok/s)", "p10–p90", "prefill (tok/s)", "p10–p90", "n", "failed"):
            table.add_column(column, justify="right", no_wrap=True)

        def rate(value) -> str:
            return "—" if value is None or value != value else f"{value:.1f}"

        for row in frame.itertuples(index=False):
            table.add_row(escape(row.config_id), str(row.depth), rate(row.decode_median),
                          f"{rate(row.decode_p10)}–{rate(row.decode_p90)}" if row.n else "",
                          rate(row.prefill_median),
                          f"{rate(row.prefill_p10)}–{rate(row.prefill_p90)}" if row.n else "",
                          str(row.n), str(row.n_failed) if row.n_failed else "")
        self.console.print(table)

    # -- pieces --------------------------------------------------------------------------------

    def _plan_device(self, options):
        from bench.engine.orchestrator import plan_device, probe_llama_build

        llama = probe_llama_build()
        gpu_visible = _gpu_visible()
        asked = options.axes.get("n_gpu_layers")
        explicit = None
        if asked:
            explicit = next((v for v in asked if v != 0), 0)
        if options.device == "cpu" and asked and any(v != 0 for v in asked):
            raise BenchError(f"--cpu contradicts --n-gpu-layers {','.join(map(str, asked))}")
        device = plan_device(options.device, explicit, bool(llama.get("supports_gpu_offload")), gpu_visible)
        if device.note:
            self.console.print(device.note)
        self._llama = llama
        return device

    def _new_run(self, out: Path | None) -> RunDir:
        if out is None:
            return RunDir(new_run_dir("runs"))
        if (out / records.RUN_META_FILE).exists():
            raise RunDirError(f"{out} already holds a run; continue it with --resume {out}, or pick another --out")
        out.mkdir(parents=True, exist_ok=True)
        return RunDir(out)

    def _meta(self, run: RunDir, options, models: dict, manifest, device) -> dict:
        from dataclasses import asdict

        from hwprobe.probe import collect

        hardware = collect(include_llama=False)
        software = hardware.get("software", {})
        software["llama_cpp"] = getattr(self, "_llama", None)
        software["bench"] = __version__
        configs = []
        for model_id, source in models.items():
            entry = {"id": model_id, "path": str(source)} if isinstance(source, Path) else source.to_dict()
            configs.append({"config_id": model_id, "entry": entry})
        return {
            "kind": RUN_KIND,
            "tool": {"name": "bench", "version": __version__},
            "status": "running",
            "started_utc": _utc(),
            "finished_utc": None,
            "host": socket.gethostname(),
            "options": options.to_dict(),
            "device": asdict(device),
            "hardware": hardware,
            "software": software,
            "manifest_path": str(manifest.path),
            "model_ids": list(models),
            "models": {c["config_id"]: c["entry"] for c in configs},
            "sessions": [{"started_utc": _utc(), "argv": sys.argv[1:], "pid": os.getpid()}],
        }


class _ConsoleDisplay:
    def __init__(self, console: Console, n_tests: int):
        self.console = console
        self.n_tests = n_tests
        self.n_done = 0

    def block_start(self, index, total, block) -> None:
        self.console.print(f"[bold]load {index}/{total}[/bold] rep {block.rep}: {escape(block.config.config_id)}")

    def measured(self, block, event) -> None:
        self.n_done += 1
        pp, tg = event.get("prefill_tps"), event.get("decode_tps")
        self.console.print(
            f"  [{self.n_done}/{self.n_tests}] depth {event.get('depth')}: prefill "
            f"{pp:.1f} tok/s, decode {tg:.1f} tok/s" if pp is not None and tg is not None
            else f"  [{self.n_done}/{self.n_tests}] depth {event.get('depth')}: no rate (too few tokens)"
        )

    def block_end(self, block, record) -> None:
        if record.status != "ok":
            self.n_done = min(self.n_tests, self.n_done + len(block.depths))
            self.console.print(f"  [red]failed[/red] during {record.stage}: {escape(record.error or '')}")

    def note(self, text: str) -> None:
        self.console.print(f"  [yellow]note[/yellow]: {escape(text)}")


def _models(ids: list[str], manifest) -> dict:
    """model id -> manifest entry, or -> Path for a GGUF file given by path."""
    from bench.manifest import DEFAULT_MODEL_ID

    chosen: dict = {}
    for item in ids or [DEFAULT_MODEL_ID]:
        if item.startswith(_LOCAL_PREFIX) or item.endswith(".gguf"):
            path = Path(item.removeprefix(_LOCAL_PREFIX)).expanduser()
            if not path.is_file():
                raise BenchError(f"{path}: no such GGUF file")
            chosen[path.stem] = path.resolve()
        else:
            chosen[item] = manifest.get(item)
    return chosen


def _gpu_facts(hardware: dict, index: int) -> dict:
    for gpu in hardware.get("gpus", []) or []:
        if gpu.get("index") == index:
            return gpu
    return {}


def _gpu_visible() -> bool:
    from hwprobe.nvml import NvmlSession

    with NvmlSession() as session:
        return session.available


def _physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except Exception:  # noqa: BLE001
        return os.cpu_count() or 1


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
