"""Calibration: the in-process loop against llama.cpp's own benchmark on the same file.

`llama-bench -m FILE -p 512 -n 128 -fa 1 -r 5 -o json` (with `-d 0,512`, so its generation test
also runs after a 512-token context like ours) is the reference; the in-process loop decodes the
same file with a 512-token prompt and 128 generated tokens, EOS ignored, median of the reps. Also
measured, each when asked: decode from an empty context (what tg128 does), the CPU sampler
(to show what GPU-side sampling saves), throughput mode (N sequences in one batch) and the cost of
NVML telemetry at 20 Hz.

Everything here runs in the calling process; `bench calibrate` and benchmarks/gpu_fidelity.py
call it. Figures are medians with p10–p90 and n, as everywhere in bench.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bench.errors import BenchError

LLAMA_BENCH_TIMEOUT_S = 900


class CalibrationError(BenchError):
    """llama-bench or the in-process loop could not run as asked."""


def spread_dict(values: list[float]) -> dict[str, Any]:
    """{n, median, p10, p90, mean, sd, samples} of some repetitions (None where undefined)."""
    from bench.engine.stats import percentile

    vals = [float(v) for v in values if v is not None]
    return {
        "n": len(vals),
        "median": percentile(vals, 50),
        "p10": percentile(vals, 10),
        "p90": percentile(vals, 90),
        "mean": statistics.fmean(vals) if vals else None,
        "sd": statistics.stdev(vals) if len(vals) > 1 else None,
        "samples": vals,
    }


def fmt_spread(s: dict | None, unit: str, digits: int = 1) -> str:
    if not s or s.get("median") is None:
        return "n/a"
    text = f"{s['median']:.{digits}f} {unit} (n={s['n']}"
    if s["n"] > 1:
        text += f", p10–p90 {s['p10']:.{digits}f}–{s['p90']:.{digits}f}"
    return text + ")"


# --------------------------------------------------------------------------- llama-bench


def find_llama_bench(given: str | None) -> str | None:
    if not given:
        return None
    path = shutil.which(given) or (given if Path(given).is_file() else None)
    if path is None:
        raise CalibrationError(f"llama-bench not found: {given!r} (give its path, or put it on PATH)")
    return path


def llama_bench_command(exe: str, model: str, n_prompt: int, n_gen: int, reps: int, depths: tuple[int, ...],
                        flash_attn: bool = True, n_gpu_layers: int = 99) -> list[str]:
    cmd = [exe, "-m", model, "-p", str(n_prompt), "-n", str(n_gen), "-fa", "1" if flash_attn else "0",
           "-r", str(reps), "-o", "json", "-ngl", str(n_gpu_layers)]
    if depths and depths != (0,):
        cmd += ["-d", ",".join(str(d) for d in depths)]
    return cmd


def parse_llama_bench(text: str, n_prompt: int, n_gen: int) -> dict[str, Any]:
    """llama-bench's JSON array -> {"pp": , "tg": , "pp_at_depth": {d: }, "tg_at_depth": {d: }, ...}."""
    start = text.find("[")
    if start < 0:
        raise CalibrationError("llama-bench printed no JSON")
    try:
        tests = json.loads(text[start:])
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"llama-bench's JSON does not parse: {exc}") from None
    out: dict[str, Any] = {"pp": None, "tg": None, "pp_at_depth": {}, "tg_at_depth": {}, "info": {}}
    for t in tests:
        samples = t.get("samples_ts") or ([t["avg_ts"]] if t.get("avg_ts") is not None else [])
        fig = spread_dict(samples)
        fig["avg_ts"] = t.get("avg_ts")
        fig["stddev_ts"] = t.get("stddev_ts")
        depth = int(t.get("n_depth") or 0)
        if t.get("n_prompt") == n_prompt and not t.get("n_gen"):
            key = "pp"
        elif t.get("n_gen") == n_gen and not t.get("n_prompt"):
            key = "tg"
        else:
            continue
        if depth == 0:
            out[key] = fig
        else:
            out[f"{key}_at_depth"][depth] = fig
        for name in ("build_commit", "build_number", "gpu_info", "backends", "model_type", "model_size",
                     "model_n_params", "n_batch", "n_ubatch", "flash_attn", "n_gpu_layers", "n_threads"):
            if name in t:
                out["info"][name] = t[name]
    if out["tg"] is None and out["pp"] is None:
        raise CalibrationError(f"llama-bench's JSON has no pp{n_prompt} or tg{n_gen} test")
    return out


def run_llama_bench(exe: str, model: str, n_prompt: int = 512, n_gen: int = 128, reps: int = 5,
                    depths: tuple[int, ...] = (0, 512), timeout_s: float = LLAMA_BENCH_TIMEOUT_S,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run llama-bench; if this build lacks -d, run again without depths."""
    cmd = llama_bench_command(exe, model, n_prompt, n_gen, reps, depths)
    result = _run(cmd, timeout_s)
    if result.returncode != 0 and "-d" in cmd:
        log("llama-bench refused -d (an older build?); running without depth tests")
        cmd = llama_bench_command(exe, model, n_prompt, n_gen, reps, (0,))
        result = _run(cmd, timeout_s)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout or "").strip().splitlines()[-3:]
        raise CalibrationError(f"llama-bench exited with {result.returncode}: {' | '.join(tail) or 'no output'}")
    parsed = parse_llama_bench(result.stdout, n_prompt, n_gen)
    parsed["command"] = cmd
    return parsed


def _run(cmd: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise CalibrationError(f"llama-bench took over {timeout_s:.0f} s; stopped") from None
    except OSError as exc:
        raise CalibrationError(f"could not run llama-bench: {exc}") from None


# --------------------------------------------------------------------------- the in-process loop


@dataclass
class InProcessOptions:
    n_prompt: int = 512
    n_gen: int = 128
    reps: int = 5
    n_gpu_layers: int = -1
    flash_attn: str = "on"
    sampler: str = "auto"  # auto | gpu | cpu
    n_threads: int | None = None
    seed: int = 42
    empty_context: bool = True  # also decode from an empty context (what tg128 measures)
    cpu_sampler_reps: int = 0  # also time the CPU sampler (0 = skip)
    parallel: int = 0  # also run throughput mode with this many sequences (0 = skip)
    telemetry_overhead_reps: int = 0  # also time NVML sampling at 20 Hz vs off (0 = skip)
    gpu_index: int = 0


def measure_inprocess(model_path: str, opts: InProcessOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Load the file with llama.cpp in this process and time the decode loop."""
    from bench.engine import generate as gen

    llama_lines: list[str] = []
    engine = gen.Engine(gen.LlamaLog(llama_lines.append))
    try:
        if opts.n_gpu_layers != 0 and not gen.supports_gpu_offload():
            raise CalibrationError("this llama-cpp-python build cannot offload to a GPU; pass --cpu, or "
                                   "reinstall it with CUDA: " + gen.REINSTALL_CUDA)
        t0 = time.perf_counter()
        facts = engine.load_model(str(model_path), opts.n_gpu_layers)
        n_threads = opts.n_threads or _physical_cores()
        per_seq = opts.n_prompt + opts.n_gen + 16
        flash = engine.create_context(per_seq, n_threads, opts.flash_attn)
        load_s = time.perf_counter() - t0
        want_gpu = opts.sampler == "gpu" or (opts.sampler == "auto" and facts.device != "cpu")
        sampler, sampler_label = _sampler(engine, want_gpu, opts, 1, log)
        log(f"loaded {model_path}: {facts.desc}; {facts.n_layers_offloaded}/{facts.n_layers_total} layers on GPU; "
            f"flash attention {'on' if flash else 'off' if flash is not None else 'unknown'}; sampler {sampler_label}; "
            f"load {load_s:.1f} s")

        rng = _rng(opts.seed)
        n_vocab = int(gen._ll.llama_vocab_n_tokens(engine.vocab))
        prompt = [int(t) for t in rng.integers(0, n_vocab, opts.n_prompt)]
        one = [int(rng.integers(0, n_vocab))]

        # Warm-up: both graph shapes (a 512-token ubatch, one-token steps) built and captured.
        engine.generate(prompt, 8, sampler, ignore_eos=True)
        engine.generate(one, 8, sampler, ignore_eos=True)

        result: dict[str, Any] = {
            "model": {"path": str(model_path), "desc": facts.desc, "size_bytes": facts.size_bytes,
                      "file_bytes": os.path.getsize(model_path), "n_params": facts.n_params,
                      "device": facts.device, "n_layers_offloaded": facts.n_layers_offloaded,
                      "n_layers_total": facts.n_layers_total},
            "settings": {"n_prompt": opts.n_prompt, "n_gen": opts.n_gen, "reps": opts.reps, "n_ctx": engine.n_ctx,
                         "n_batch": engine.n_batch, "n_threads": n_threads, "flash_attn": flash,
                         "sampler": sampler_label, "seed": opts.seed, "ignore_eos": True},
            "load_s": load_s,
        }
        runs = [_timed(engine, prompt, opts.n_gen, sampler) for _ in range(opts.reps)]
        result["decode_tps"] = spread_dict([r["decode_tps"] for r in runs])
        result["ttft_ms"] = spread_dict([r["ttft_ms"] for r in runs])
        result["prefill_tps"] = spread_dict([r["prefill_tps"] for r in runs])
        result["itl_p50_ms"] = spread_dict([r["itl_p50_ms"] for r in runs])
        log(f"in-process decode {fmt_spread(result['decode_tps'], 't/s')} after a {opts.n_prompt}-token prompt; "
            f"TTFT {fmt_spread(result['ttft_ms'], 'ms')}")
        if opts.empty_context:
            runs0 = [_timed(engine, one, opts.n_gen, sampler) for _ in range(opts.reps)]
            result["decode_tps_empty_context"] = spread_dict([r["decode_tps"] for r in runs0])
            log(f"in-process decode {fmt_spread(result['decode_tps_empty_context'], 't/s')} from an empty context")
        if opts.cpu_sampler_reps and sampler_label == "gpu":
            cpu = gen.CpuSampler(engine.vocab, 0.0, opts.seed)
            runs_cpu = [_timed(engine, prompt, opts.n_gen, cpu) for _ in range(opts.cpu_sampler_reps)]
            result["decode_tps_cpu_sampler"] = spread_dict([r["decode_tps"] for r in runs_cpu])
            log(f"in-process decode {fmt_spread(result['decode_tps_cpu_sampler'], 't/s')} with the CPU sampler")
            engine.select_gpu_chain(True)
        if opts.telemetry_overhead_reps:
            result["telemetry_overhead"] = _telemetry_overhead(engine, prompt, opts, sampler, log)
        if opts.parallel and opts.parallel > 1:
            # A context of its own: N sequences share its cells, and single-stream figures above
            # came from a context shaped exactly like a normal run's.
            engine.free_context()
            engine.create_context(per_seq * opts.parallel, n_threads, opts.flash_attn, n_seq_max=opts.parallel)
            psampler, _ = _sampler(engine, want_gpu, opts, opts.parallel, log)
            result["parallel"] = _throughput(engine, prompt, opts, psampler, result, log)
        return result
    finally:
        engine.close()


def _sampler(engine, want_gpu: bool, opts: InProcessOptions, n_seq: int, log):
    """Greedy sampling: on the GPU (attached to every sequence) when wanted and accepted."""
    from bench.engine import generate as gen

    if want_gpu:
        gpu = gen.GpuSampler(engine.vocab, 0.0, opts.seed)
        if engine.attach_gpu_sampler(gpu, range(n_seq)):
            return gpu, "gpu"
        if opts.sampler == "gpu":
            raise CalibrationError("llama.cpp refused the GPU-side sampler (llama_set_sampler) on this build")
        log("llama.cpp refused the GPU-side sampler; sampling on the CPU")
    return gen.CpuSampler(engine.vocab, 0.0, opts.seed), "cpu"


def _timed(engine, prompt, n_gen, sampler) -> dict[str, Any]:
    from bench.engine.stats import request_timing

    g = engine.generate(prompt, n_gen, sampler, ignore_eos=True)
    t = request_timing(g.t_start_ns, g.token_times_ns, g.n_prompt_tokens, g.t_done_ns)
    return {"decode_tps": t.decode_tps, "ttft_ms": t.ttft_ms, "prefill_tps": t.prefill_tps,
            "itl_p50_ms": t.itl_p50_ms, "n_gen": len(g.token_ids), "sampler": g.extra.get("sampler")}


def _telemetry_overhead(engine, prompt, opts: InProcessOptions, sampler, log) -> dict[str, Any]:
    """Decode TPS with the NVML/psutil sampler at 20 Hz vs without, interleaved (off, on, off, on …)."""
    from hwprobe.sampler import TelemetrySampler

    off, on = [], []
    nvml = None
    for _ in range(opts.telemetry_overhead_reps):
        off.append(_timed(engine, prompt, opts.n_gen, sampler)["decode_tps"])
        tel = TelemetrySampler(hz=20.0, gpu_index=opts.gpu_index)
        nvml = tel.nvml_available
        tel.start()
        try:
            on.append(_timed(engine, prompt, opts.n_gen, sampler)["decode_tps"])
        finally:
            tel.stop()
    s_off, s_on = spread_dict(off), spread_dict(on)
    diff = (s_on["median"] - s_off["median"]) / s_off["median"] if s_off["median"] else None
    log(f"telemetry at 20 Hz: {fmt_spread(s_on, 't/s')} vs off {fmt_spread(s_off, 't/s')}: "
        f"{100 * diff:+.2f}% (NVML {'on' if nvml else 'unavailable'})" if diff is not None else "telemetry: n/a")
    return {"hz": 20.0, "nvml": nvml, "off_tps": s_off, "on_tps": s_on, "diff_share": diff}


def _throughput(engine, prompt, opts: InProcessOptions, sampler, single: dict, log) -> dict[str, Any]:
    from bench.engine.parallel import ParallelDecoder
    from bench.engine.stats import request_timing

    n = opts.parallel
    reps = max(1, min(opts.reps, 3))
    aggregates, decodes, ttfts, latencies, streams = [], [], [], [], []
    with ParallelDecoder(engine, n) as dec:
        dec.generate([prompt[:64]] * n, 8, sampler, ignore_eos=True)  # warm-up of the N-token step
        for _ in range(reps):
            r = dec.generate([prompt] * n, opts.n_gen, sampler, ignore_eos=True)
            aggregates.append(r.aggregate_tps)
            decodes.append(r.aggregate_decode_tps)
            for g in r.generations:
                t = request_timing(g.t_start_ns, g.token_times_ns, g.n_prompt_tokens, g.t_done_ns)
                ttfts.append(t.ttft_ms)
                latencies.append(t.latency_ms)
                streams.append(t.decode_tps)
    out = {
        "n_parallel": n,
        "reps": reps,
        "aggregate_tps": spread_dict(aggregates),
        "aggregate_decode_tps": spread_dict(decodes),
        "ttft_ms": spread_dict(ttfts),
        "latency_ms": spread_dict(latencies),
        "per_stream_decode_tps": spread_dict(streams),
        "sampler": r.sampler,
    }
    base = (single.get("decode_tps") or {}).get("median")
    agg = out["aggregate_decode_tps"]["median"]
    out["speedup_vs_single_stream"] = agg / base if base and agg else None
    log(f"throughput x{n}: aggregate decode {fmt_spread(out['aggregate_decode_tps'], 't/s')} "
        f"({out['speedup_vs_single_stream']:.2f}x single-stream), wall-clock aggregate "
        f"{fmt_spread(out['aggregate_tps'], 't/s')}; per-request TTFT {fmt_spread(out['ttft_ms'], 'ms')}, "
        f"latency {fmt_spread(out['latency_ms'], 'ms')}" if out["speedup_vs_single_stream"] else
        f"throughput x{n}: {out}")
    return out


def _rng(seed: int):
    import numpy as np

    return np.random.default_rng(seed)


def _physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except Exception:  # noqa: BLE001
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- putting them together


def compare(inproc: dict[str, Any], bench: dict[str, Any] | None, n_prompt: int) -> dict[str, Any]:
    """Ratios of the in-process figures to llama-bench's (None where either is missing)."""

    def med(d):
        return (d or {}).get("median")

    def ratio(a, b):
        return a / b if a and b else None

    decode = med(inproc.get("decode_tps"))
    decode0 = med(inproc.get("decode_tps_empty_context"))
    out: dict[str, Any] = {"decode_vs_tg": None, "decode_vs_tg_at_depth": None, "empty_context_vs_tg": None,
                           "ttft_ms": med(inproc.get("ttft_ms")), "prefill_ms_implied_by_pp": None,
                           "ttft_vs_pp_prefill": None}
    if not bench:
        return out
    tg = med(bench.get("tg"))
    tg_d = med((bench.get("tg_at_depth") or {}).get(n_prompt))
    pp = med(bench.get("pp"))
    out["decode_vs_tg"] = ratio(decode, tg)
    out["decode_vs_tg_at_depth"] = ratio(decode, tg_d)
    out["empty_context_vs_tg"] = ratio(decode0, tg)
    if pp:
        out["prefill_ms_implied_by_pp"] = n_prompt / pp * 1000.0
        out["ttft_vs_pp_prefill"] = ratio(out["ttft_ms"], out["prefill_ms_implied_by_pp"])
    return out


def gpu_facts(gpu_index: int = 0) -> dict[str, Any] | None:
    """The hardware probe's entry for this GPU (None without NVML)."""
    try:
        from hwprobe.probe import collect

        from bench.roofline import gpu_entry

        return gpu_entry(collect(include_llama=False), gpu_index)
    except Exception:  # noqa: BLE001 - calibration goes on without the card's name
        return None
