"""`bench profile`: run configurations in-process, time every token, sample the GPU, keep everything.

Each configuration runs in its own child process (bench.engine.worker); this command plans the
run, writes run.json, follows the children (bench.engine.orchestrator), scores the outputs once
every model is unloaded, and prints a summary. Exit status: 0 when every configuration completed
(and scoring, if asked for, worked), 1 when any failed, 130 when interrupted, 2 for bad input.
"""

from __future__ import annotations

import dataclasses
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

PRESETS = ("quick", "study", "full")


@click.command("profile")
@click.argument("ids", nargs=-1)
@click.option("--tier", help="Every study configuration of this tier (A or B).")
@click.option("--all", "all_", is_flag=True, help="Every study configuration.")
@click.option("--preset", type=click.Choice(PRESETS), default="quick", show_default=True,
              help="Which requests: quick = one item per variant, study = 46 per model, full = all.")
@click.option("--reps", type=click.IntRange(1), default=1, show_default=True, help="Repetitions of every request.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Write the run into exactly this directory (default: runs/<UTC time>-<host>/).")
@click.option("--resume", type=click.Path(file_okay=False, path_type=Path),
              help="Finish an interrupted run: skip what it recorded, reuse its options.")
@click.option("--device", type=click.Choice(["auto", "gpu", "cpu"]), default="auto", show_default=True,
              help="auto: the GPU when llama-cpp-python can offload, the CPU only when there is no GPU.")
@click.option("--gpu", "gpu_flag", is_flag=True, help="Same as --device gpu.")
@click.option("--cpu", "cpu_flag", is_flag=True, help="Same as --device cpu: run on the CPU on purpose.")
@click.option("--n-gpu-layers", type=int, help="Layers to offload (-1 = all; default all on GPU runs).")
@click.option("--flash-attn", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Flash attention; auto = on where the build and device support it (recorded).")
@click.option("--threads", "n_threads", type=click.IntRange(1), help="CPU threads (default: every physical core).")
@click.option("--n-ctx", type=click.IntRange(256), help="Context size (default: longest prompt + its max tokens).")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--temperature", type=click.FloatRange(0.0), default=0.0, show_default=True)
@click.option("--constrained", is_flag=True,
              help="Also run every JSON variant with JSON-schema constrained decoding (mode = constrained).")
@click.option("--max-tokens", type=click.IntRange(1), help="Cap every request's max tokens (recorded).")
@click.option("--sample-hz", type=click.FloatRange(0.0), default=20.0, show_default=True,
              help="Telemetry samples per second (0 = off).")
@click.option("--gpu-index", type=click.IntRange(0), default=0, show_default=True, help="NVML index of the GPU.")
@click.option("--no-warmup", is_flag=True, help="Skip the uncounted warm-up request.")
@click.option("--allow-partial", is_flag=True,
              help="A model too big for free GPU memory: offload the layers that fit instead of refusing it.")
@click.option("--twin", is_flag=True,
              help="Time random-weight twins of the models (bench twin: exact shapes, real quant types), "
              "EOS ignored; twins are never scored.")
@click.option("--sampler", type=click.Choice(["auto", "gpu", "cpu"]), default="auto", show_default=True,
              help="Where sampling runs: gpu = inside llama.cpp's graph (llama_set_sampler); auto = gpu on "
              "GPU runs. Recorded per configuration; JSON-schema constrained requests always sample on the CPU.")
@click.option("--parallel", type=click.IntRange(1), default=1, show_default=True,
              help="Throughput mode: decode N requests at once as sequences of one batch.")
@click.option("--ignore-eos", is_flag=True, help="Generate exactly the max tokens of every request.")
@click.option("--no-download", is_flag=True, help="Use only files already on disk (no hub access).")
@click.option("--no-score", is_flag=True, help="Do not score the outputs (run `bench score DIR` later).")
@click.option("--no-nli", is_flag=True, help="Score without NLI factual consistency.")
@click.option("--nli-model", help="NLI checkpoint for factual consistency (name or path).")
@click.option("--gpus", help="Several GPUs at once: NVML indices (0,1,…) or 'all'; one worker per GPU, "
              "each configuration to whichever GPU is free.")
@click.option("--split", multiple=True, metavar="ID[:N]",
              help="With --gpus: run configuration ID over N GPUs (default: all of --gpus), layers split "
              "in proportion to free memory. Repeatable.")
@click.option("--ray", "ray", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Every configuration a Ray task (num_gpus=1; 0 with --cpu). Alone: a Ray on this machine; "
              "'auto': the cluster `ray start` began here; or a cluster address.")
@click.pass_context
def command(ctx, ids, tier, all_, preset, reps, out, resume, device, gpu_flag, cpu_flag, n_gpu_layers,
            flash_attn, n_threads, n_ctx, seed, temperature, constrained, max_tokens, sample_hz, gpu_index,
            no_warmup, no_download, no_score, no_nli, nli_model, allow_partial, twin, sampler, parallel, ignore_eos, gpus, split, ray):
    """Profile models (by ID, --tier or --all; default: the embedded SmolLM2-135M).

    Every configuration runs in its own process: load, one uncounted warm-up, every request of the
    preset (KV cache cleared before each), unload. A crash costs only that configuration. Records go
    to a run directory as they happen; Ctrl-C keeps them and prints how to resume.
    """
    from bench.engine.orchestrator import ProfileOptions

    if gpu_flag and cpu_flag:
        raise click.UsageError("--gpu and --cpu contradict each other")
    if gpu_flag or cpu_flag:
        flag_device = "gpu" if gpu_flag else "cpu"
        if ctx.get_parameter_source("device") == ParameterSource.COMMANDLINE and device != flag_device:
            raise click.UsageError(f"--{flag_device} contradicts --device {device}")
        device = flag_device
    if resume is not None and out is not None:
        raise click.UsageError("--resume names the run directory already; drop --out")
    if ray is not None and (gpus or split):
        raise click.UsageError("--ray places each configuration on a cluster GPU itself; drop --gpus/--split")

    options = ProfileOptions(
        preset=preset, reps=reps, device=device, n_gpu_layers=n_gpu_layers, flash_attn=flash_attn,
        n_threads=n_threads, n_ctx=n_ctx, seed=seed, temperature=temperature, constrained=constrained,
        max_tokens=max_tokens, sample_hz=sample_hz, gpu_index=gpu_index, warmup=not no_warmup,
        allow_partial=allow_partial, sampler=sampler, parallel=parallel, ignore_eos=ignore_eos or twin, twin=twin,
        download=not no_download, score=not no_score, nli=not no_nli, nli_model=nli_model,
        gpus=gpus, split=list(split), ray=ray,
    )
    root = ctx.find_root().obj
    manifest_path = root.manifest_path if root else None
    # Piped or logged output has no terminal width; 120 columns keep the summary table's units whole.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    code = ProfileCommand(console).main(
        ctx, options, ids=list(ids), tier=tier, all_=all_, out=out, resume=resume, manifest_path=manifest_path,
    )
    ctx.exit(code)


class ProfileCommand:
    def __init__(self, console: Console):
        self.console = console

    def main(self, ctx, options, *, ids, tier, all_, out, resume, manifest_path) -> int:
        from bench.engine.orchestrator import Orchestrator, plan_device, probe_llama_build
        from bench.manifest import load_manifest

        if resume is not None:
            run, options, entries, requests, manifest = self._resume(ctx, options, resume, ids, tier, all_,
                                                                   manifest_path)
        else:
            manifest = load_manifest(manifest_path)
            entries = manifest.select(ids=ids, tier=tier, all_=all_)
            requests = self._requests(options.preset)
            run = None
        if options.n_threads is None and options.ray is None:  # on Ray: each worker host's cores
            options.n_threads = _physical_cores()

        from bench.engine.scaleout import plan_pool

        gpu_visible, gpu_reason = _gpu_visible()
        pool = plan_pool(options, [e.id for e in entries], gpu_visible, gpu_reason)  # --gpus, --split
        ray_plan = None
        if options.ray is not None:
            from bench.engine.ray_backend import plan_ray

            ray_plan = plan_ray(options)
            llama, device = ray_plan.llama, ray_plan.device
        else:
            llama = probe_llama_build()
            device = plan_device(options.device, options.n_gpu_layers, bool(llama.get("supports_gpu_offload")),
                                 gpu_visible)
        if pool is not None:
            pool.check_device(device)
        if device.note:
            self.console.print(device.note)

        if run is None:
            run = self._new_run(out)
        hardware = _hardware()
        gpu_uuid = _gpu_uuid(hardware, options.gpu_index) if device.device == "gpu" else None
        meta = self._meta(run, options, device, entries, requests, manifest, hardware, llama, resume)
        run.write_meta(meta)
        if not gpu_visible:
            note = f"no NVML ({gpu_reason}): power, energy and VRAM will be null, not 0"
            self.console.print(note)
            run.log(note)
        run.log("command: bench " + " ".join(sys.argv[1:]))
        self.console.print(f"run directory: {escape(str(run.path))}")

        from bench.engine.orchestrator import ConfigPlan, Interrupted
        from bench.engine.progress import RichDisplay, summary_rows, summary_table

        plans = [ConfigPlan(config_id=e.id, entry=e, twin=options.twin) for e in entries]
        if pool is not None or ray_plan is not None:
            from bench.engine.pool_display import PoolDisplay

            display = PoolDisplay(self.console)  # one row per GPU worker / Ray task
        else:
            display = RichDisplay(self.console)

        def resolve(plan: ConfigPlan) -> None:
            if plan.twin:  # the model's random-weight twin, written once and cached
                from bench.twin import ensure_twin

                made = ensure_twin(plan.entry, progress=lambda msg: display.note(escape(msg)), manifest=manifest)
                plan.model_path, plan.model_bytes = str(made.path), made.size_bytes
                plan.sha256, plan.verified_by = None, "twin"
                return
            from bench.fetch import resolve_model

            resolved = resolve_model(plan.entry, manifest, download=options.download,
                                     progress=lambda msg: display.note(escape(msg)))
            plan.model_path = str(resolved.path)
            plan.model_bytes = resolved.size_bytes
            plan.sha256 = resolved.sha256
            plan.verified_by = resolved.verified_by

        def resolved_to_meta(plan: ConfigPlan) -> None:
            for config in meta["configs"]:
                if config["config_id"] == plan.config_id:
                    config["resolved"] = {"path": plan.model_path, "size_bytes": plan.model_bytes,
                                          "sha256": plan.sha256, "verified_by": plan.verified_by}
            run.write_meta(meta)

        orchestrator = Orchestrator(
            run, options, device, [_request_dict(r) for r in requests], display, resolve,
            host=socket.gethostname(), gpu_uuid=gpu_uuid, on_config_resolved=resolved_to_meta,
            **_peak_bandwidth(hardware, options.gpu_index),
        )
        if pool is not None:
            orchestrator = pool.runner(run, options, device, [_request_dict(r) for r in requests], display,
                                       resolve, resolved_to_meta, socket.gethostname(), meta)
        elif ray_plan is not None:
            orchestrator = ray_plan.runner(run, options, [_request_dict(r) for r in requests], manifest,
                                           display, meta)
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        interrupted = False
        try:
            outcomes = orchestrator.run_all(plans)
        except (Interrupted, KeyboardInterrupt):
            interrupted = True
            outcomes = []
        finally:
            display.stop()
            signal.signal(signal.SIGTERM, previous)

        failed = [o.record for o in outcomes if o.record.status != "ok"]
        meta["finished_utc"] = _utc()
        meta["status"] = "interrupted" if interrupted else ("failed" if failed else "completed")
        run.write_meta(meta)
        self.console.print(summary_table(summary_rows(run)))
        if interrupted:
            run.log("interrupted; resume with: bench profile --resume " + str(run.path))
            self.console.print(
                f"[yellow]interrupted[/yellow]: everything recorded is kept in {escape(str(run.path))}; "
                f"resume with: bench profile --resume {escape(str(run.path))}"
            )
            return 130

        score_ok = self._score(run, options)
        if failed:
            self.console.print(
                f"[red]{len(failed)} of {len(plans)} configurations failed[/red] "
                f"({', '.join(escape(r.config_id) for r in failed)}); details in {escape(str(run.file(records.LOG_FILE)))}; "
                f"retry them with: bench profile --resume {escape(str(run.path))}"
            )
        return 0 if not failed and score_ok else 1

    # -- pieces --------------------------------------------------------------------------------

    def _score(self, run: RunDir, options) -> bool:
        """Score in this process, after every child (and its model) is gone. True unless it failed."""
        where = escape(str(run.path))
        if options.twin:
            self.console.print("not scored: twins have random weights (timing only)")
            return True
        if not options.score:
            self.console.print(f"not scored (--no-score); score later with: bench score {where}")
            return True
        try:
            from bench.scorestage import score_run_dir
        except ModuleNotFoundError as exc:
            if exc.name != "bench.scorestage":
                raise
            self.console.print(f"scoring is not available in this install; score later with: bench score {where}")
            return True
        self.console.print("scoring outputs …")
        try:
            summary = score_run_dir(run.path, nli_model=options.nli_model, no_nli=not options.nli,
                                    console=self.console)
        except BenchError as exc:
            self.console.print(f"[red]scoring failed[/red]: {escape(str(exc))}; the generation records are "
                               f"complete; retry with: bench score {where}")
            return False
        self.console.print(
            f"scored {summary.n_scored} requests into {escape(str(summary.output_path))} "
            f"in {summary.elapsed_s:.0f} s" + (f"; {len(summary.bad_rows)} rows skipped" if summary.bad_rows else "")
            + f"; report: bench report {where}"
        )
        return True

    def _requests(self, preset: str):
        from scoring.tasks import load_suite

        try:
            return load_suite().requests(preset)
        except ValueError as exc:
            raise BenchError(f"task suite: {exc}") from None

    def _new_run(self, out: Path | None) -> RunDir:
        if out is None:
            return RunDir(new_run_dir("runs"))
        if (out / records.RUN_META_FILE).exists():
            raise RunDirError(f"{out} already holds a run; continue it with --resume {out}, or pick another --out")
        out.mkdir(parents=True, exist_ok=True)
        return RunDir(out)

    def _resume(self, ctx, options, path: Path, ids, tier, all_, manifest_path):
        from bench.engine.orchestrator import ProfileOptions
        from bench.manifest import load_manifest
        from scoring.tasks import load_suite

        run = RunDir.open(path)
        meta = run.meta()
        saved = ProfileOptions.from_dict(meta.get("options", {}))
        given = {name for name in ProfileOptions.LOCKED
                 if ctx.get_parameter_source(_PARAM.get(name, name)) == ParameterSource.COMMANDLINE}
        if ctx.params.get("gpu_flag") or ctx.params.get("cpu_flag"):
            given.add("device")
        for name in sorted(given):
            mine, theirs = getattr(options, name), getattr(saved, name)
            if mine != theirs:
                flag = _FLAG.get(name, "--" + name.replace("_", "-"))
                raise BenchError(
                    f"--resume: {flag} {mine!r} differs from the run's {theirs!r}; "
                    "a resumed run keeps its options (drop the option, or start a new run)"
                )
        # Scoring, download and telemetry-rate choices do not alter the records: the run's own
        # apply unless this command line names them.
        for name in ("download", "score", "nli", "nli_model", "sample_hz", "gpus", "split", "ray"):
            if ctx.get_parameter_source(_PARAM.get(name, name)) == ParameterSource.COMMANDLINE:
                setattr(saved, name, getattr(options, name))
        config_ids = [c["config_id"] for c in meta.get("configs", [])]
        if (ids and list(ids) != config_ids) or tier or all_:
            raise BenchError(f"--resume: the run's configurations are {', '.join(config_ids)}; do not name others")
        manifest_file = meta.get("manifest_path")
        manifest = load_manifest(manifest_file if manifest_file and Path(manifest_file).exists() else manifest_path)
        entries = [manifest.get(config_id) for config_id in config_ids]
        suite = load_suite()
        requests = []
        for request_id in meta.get("request_ids", []):
            item_id, variant = request_id.rsplit("/", 1)
            try:
                requests.append(suite.request(item_id, variant))
            except ValueError as exc:
                raise BenchError(f"--resume: the task suite no longer has {request_id}: {exc}") from None
        self.console.print(f"resuming {escape(str(run.path))}: {len(run.recorded_keys())} requests already recorded")
        return run, saved, entries, requests, manifest

    def _meta(self, run, options, device, entries, requests, manifest, hardware, llama, resume) -> dict:
        meta = run.meta() if resume is not None else {}
        software = hardware.get("software", {})
        software["llama_cpp"] = llama
        software["bench"] = __version__
        previous_configs = {c["config_id"]: c for c in meta.get("configs", [])}
        sessions = meta.get("sessions", [])
        sessions.append({"started_utc": _utc(), "argv": sys.argv[1:], "host": socket.gethostname(),
                         "pid": os.getpid()})
        meta.update({
            "tool": {"name": "bench", "version": __version__},
            "status": "running",
            "started_utc": meta.get("started_utc", _utc()),
            "finished_utc": None,
            "host": socket.gethostname(),
            "options": options.to_dict(),
            "device": dataclasses.asdict(device),
            "hardware": hardware,
            "software": software,
            "manifest_path": str(manifest.path),
            "configs": [
                {"config_id": e.id, "entry": e.to_dict(),
                 "resolved": previous_configs.get(e.id, {}).get("resolved")}
                for e in entries
            ],
            "preset": options.preset,
            "request_ids": [r.request_id for r in requests],
            "sessions": sessions,
        })
        return meta


# ProfileOptions field -> click parameter name / flag, where they differ.
_PARAM = {"warmup": "no_warmup", "download": "no_download", "score": "no_score", "nli": "no_nli"}
_FLAG = {"n_threads": "--threads", "warmup": "--no-warmup"}


def _request_dict(request) -> dict:
    data = dataclasses.asdict(request)
    data["messages"] = [dict(m) for m in request.messages]
    return data


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except Exception:  # noqa: BLE001
        return os.cpu_count() or 1


def _gpu_visible() -> tuple[bool, str | None]:
    from hwprobe.nvml import NvmlSession

    with NvmlSession() as session:
        return session.available, session.error


def _peak_bandwidth(hardware: dict, index: int) -> dict:
    """The GPU's peak memory bandwidth for the roofline figures (bench.roofline): NVML, else a table."""
    from bench.roofline import gpu_entry, peak_bandwidth

    gbs, source = peak_bandwidth(gpu_entry(hardware, index))
    return {"peak_gbs": gbs, "peak_source": source}


def _hardware() -> dict:
    from hwprobe.probe import collect

    return collect(include_llama=False)


def _gpu_uuid(hardware: dict, index: int) -> str | None:
    for gpu in hardware.get("gpus", []):
        if gpu.get("index") == index:
            return gpu.get("uuid")
    return None
