"""`bench calibrate ID|PATH`: the in-process loop against llama-bench on the same file."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Any

import click

from bench.errors import BenchError, RunDirError

CALIBRATION_FILE = "calibration.json"


@click.command("calibrate")
@click.argument("target")
@click.option("--llama-bench", "llama_bench", metavar="PATH",
              help="llama-bench to compare with (run as: -p 512 -n 128 -fa 1 -r REPS -o json -d 0,512).")
@click.option("--reps", type=click.IntRange(1), default=5, show_default=True)
@click.option("--n-prompt", type=click.IntRange(1), default=512, show_default=True)
@click.option("--n-gen", type=click.IntRange(2), default=128, show_default=True)
@click.option("--twin", is_flag=True, help="TARGET is a manifest id: calibrate on its random-weight twin.")
@click.option("--quant", type=click.Choice(["Q4_K_M", "Q8_0"]), help="The twin's quant (default: the model's).")
@click.option("--run", "run_path", type=click.Path(file_okay=False, path_type=Path),
              help="Run directory to store calibration.json in (default: a new one under runs/).")
@click.option("--sampler", type=click.Choice(["auto", "gpu", "cpu"]), default="auto", show_default=True,
              help="Greedy sampling: gpu = inside llama.cpp's graph (llama_set_sampler); auto = gpu on GPU runs.")
@click.option("--flash-attn", type=click.Choice(["on", "off", "auto"]), default="on", show_default=True)
@click.option("--cpu", "cpu_flag", is_flag=True, help="Run on the CPU (n_gpu_layers 0).")
@click.option("--threads", "n_threads", type=click.IntRange(1), help="CPU threads (default: every physical core).")
@click.option("--parallel", type=click.IntRange(0), default=0, help="Also run throughput mode with N sequences.")
@click.option("--cpu-sampler-reps", type=click.IntRange(0), default=0,
              help="Also time the CPU sampler this many times (shows what GPU sampling saves).")
@click.option("--telemetry-overhead", "telemetry_reps", type=click.IntRange(0), default=0,
              help="Also time NVML telemetry at 20 Hz vs off, this many interleaved pairs.")
@click.option("--no-download", is_flag=True, help="Use only files already on disk.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write this calibration's JSON here.")
@click.pass_context
def command(ctx, target, llama_bench, reps, n_prompt, n_gen, twin, quant, run_path, sampler, flash_attn, cpu_flag,
            n_threads, parallel, cpu_sampler_reps, telemetry_reps, no_download, json_out):
    """Time TARGET (a manifest id or a GGUF path) in-process and, with --llama-bench, with llama-bench.

    Prints both decode speeds and their ratio, and TTFT against the prefill time llama-bench's
    pp figure implies. The result is stored as calibration.json in the run directory.
    """
    from bench import calibration as cal
    from bench import roofline
    from bench.rundir import RunDir, new_run_dir, write_json_atomic

    root = ctx.find_root().obj
    model_path, model_id, is_twin = _resolve(target, twin, quant, root.manifest_path if root else None,
                                             download=not no_download)
    exe = cal.find_llama_bench(llama_bench)
    run = _run_dir(run_path, RunDir, new_run_dir)
    say = _printer()
    say(f"calibrating {model_path}" + (f" (twin of {model_id})" if is_twin else ""))
    gpu = None if cpu_flag else cal.gpu_facts()
    result: dict[str, Any] = {"model_id": model_id, "twin": is_twin, "model_path": str(model_path),
                              "host": socket.gethostname(), "started_utc": _utc(), "gpu": gpu}

    if exe:
        say(f"llama-bench: {' '.join(cal.llama_bench_command(exe, str(model_path), n_prompt, n_gen, reps, (0, n_prompt)))}")
        t0 = time.perf_counter()
        lb = cal.run_llama_bench(exe, str(model_path), n_prompt, n_gen, reps, (0, n_prompt), log=say)
        result["llama_bench"] = lb
        tg_d = (lb.get("tg_at_depth") or {}).get(n_prompt)
        say(f"llama-bench pp{n_prompt} {cal.fmt_spread(lb.get('pp'), 't/s')}; tg{n_gen} {cal.fmt_spread(lb.get('tg'), 't/s')}"
            + (f"; tg{n_gen} after {n_prompt} tokens {cal.fmt_spread(tg_d, 't/s')}" if tg_d else "")
            + f" [{time.perf_counter() - t0:.0f} s]")
    else:
        result["llama_bench"] = None

    opts = cal.InProcessOptions(n_prompt=n_prompt, n_gen=n_gen, reps=reps, n_gpu_layers=0 if cpu_flag else -1,
                                flash_attn=flash_attn, sampler=sampler, n_threads=n_threads,
                                cpu_sampler_reps=cpu_sampler_reps, parallel=parallel,
                                telemetry_overhead_reps=telemetry_reps)
    result["inprocess"] = cal.measure_inprocess(str(model_path), opts, log=say)
    result["ratios"] = cal.compare(result["inprocess"], result["llama_bench"], n_prompt)
    peak, source = roofline.peak_bandwidth(gpu)
    decode = (result["inprocess"].get("decode_tps") or {}).get("median")
    result["roofline"] = roofline.roofline(result["inprocess"]["model"]["size_bytes"], decode, peak, source)
    result["finished_utc"] = _utc()
    _print_summary(say, result, n_prompt, n_gen)

    _store(run, result, write_json_atomic)
    say(f"stored in {run.file(CALIBRATION_FILE)}")
    if json_out is not None:
        write_json_atomic(json_out, result)


def _resolve(target: str, twin: bool, quant: str | None, manifest_path, download: bool):
    """(path, model id or None, is twin) for a GGUF path or a manifest id."""
    from bench.twin import read_twin_marker

    path = Path(target).expanduser()
    if path.is_file() and not twin:
        marker = read_twin_marker(path)
        return path, (marker or {}).get("twin_of"), bool(marker)
    from bench.manifest import load_manifest

    manifest = load_manifest(manifest_path)
    if not twin and ("/" in target or target.endswith(".gguf")):
        raise BenchError(f"{target}: no such file")
    entry = manifest.get(target)
    if twin:
        from bench.twin import ensure_twin

        made = ensure_twin(entry, quant, progress=lambda m: click.echo(m), manifest=manifest)
        return made.path, made.model_id, True
    if quant and quant != entry.quant:
        raise click.UsageError(f"--quant only applies to twins; {entry.id} is {entry.quant}")
    from bench.fetch import resolve_model

    resolved = resolve_model(entry, manifest, download=download, progress=lambda m: click.echo(m))
    return resolved.path, entry.id, False


def _run_dir(path: Path | None, RunDir, new_run_dir):
    if path is None:
        run = RunDir(new_run_dir("runs"))
        run.write_meta({"tool": {"name": "bench"}, "kind": "calibration", "started_utc": _utc(),
                        "host": socket.gethostname(), "argv": sys.argv[1:]})
        return run
    if not path.is_dir():
        raise RunDirError(f"{path}: not a directory (give an existing run directory, or leave --run out)")
    return RunDir(path)


def _store(run, result: dict, write_json_atomic) -> None:
    """Append this calibration to the run's calibration.json (one file, a list of calibrations)."""
    import json

    file = run.file(CALIBRATION_FILE)
    doc = {"schema_version": 1, "calibrations": []}
    if file.exists():
        try:
            doc = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise RunDirError(f"{file}: unreadable ({exc}); move it aside to store a new calibration") from None
    doc.setdefault("calibrations", []).append(result)
    write_json_atomic(file, doc)


def _print_summary(say, r: dict, n_prompt: int, n_gen: int) -> None:
    from bench import roofline
    from bench.calibration import fmt_spread

    ip, lb, ratios = r["inprocess"], r["llama_bench"], r["ratios"]
    say("— summary —")
    if lb:
        tg_d = (lb.get("tg_at_depth") or {}).get(n_prompt)
        say(f"llama-bench   tg{n_gen}: {fmt_spread(lb.get('tg'), 't/s')}; after {n_prompt} tokens: "
            f"{fmt_spread(tg_d, 't/s')}; pp{n_prompt}: {fmt_spread(lb.get('pp'), 't/s')}")
    say(f"in-process    decode after a {n_prompt}-token prompt: {fmt_spread(ip.get('decode_tps'), 't/s')}; "
        f"from an empty context: {fmt_spread(ip.get('decode_tps_empty_context'), 't/s')}; "
        f"sampler {ip['settings']['sampler']}, flash attention {ip['settings']['flash_attn']}")
    if lb:
        say("ratio         in-process / llama-bench: "
            f"{_x(ratios['decode_vs_tg'])} of tg{n_gen} (decode after {n_prompt} tokens vs tg from empty), "
            f"{_x(ratios['decode_vs_tg_at_depth'])} of tg{n_gen} after {n_prompt} tokens (same work), "
            f"{_x(ratios['empty_context_vs_tg'])} from an empty context")
        if ratios.get("prefill_ms_implied_by_pp"):
            say(f"TTFT          {fmt_spread(ip.get('ttft_ms'), 'ms')} vs {ratios['prefill_ms_implied_by_pp']:.1f} ms "
                f"prefill implied by pp{n_prompt} ({_x(ratios['ttft_vs_pp_prefill'])})")
    else:
        say(f"TTFT          {fmt_spread(ip.get('ttft_ms'), 'ms')} (no llama-bench given: in-process figures only)")
    say("roofline      " + roofline.describe(r.get("roofline")))


def _x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}x"


def _printer():
    def say(message: str) -> None:
        click.echo(message)
        sys.stdout.flush()

    return say


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
