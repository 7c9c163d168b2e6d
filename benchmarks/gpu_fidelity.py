"""GPU fidelity: are bench's in-process numbers as true as llama-bench's? One run, one table.

For llama3.2:1b, qwen2.5:1.5b and llama3.1:8b at Q4_K_M and Q8_0 it writes random-weight twins
(`bench twin`: exact shapes, llama.cpp's own quantizer), then for each twin runs `bench calibrate`:
llama-bench (-p 512 -n 128 -fa 1 -r REPS -d 0,512) and the in-process loop (512-token prompt,
128 generated, EOS ignored, GPU-side greedy sampling, flash attention on) on the same file, plus
the CPU sampler for comparison. On the first twin it also runs throughput mode (8 sequences in
one batch) and NVML telemetry at 20 Hz vs off. Every step runs in its own process with a
timeout, so one failure costs one row; results are written after every step.

    python benchmarks/gpu_fidelity.py --out DIR            # everything (about 5 min on an H100)
    python benchmarks/gpu_fidelity.py --out DIR --quick    # llama3.2:1b Q4_K_M only (about 2 min)
    python benchmarks/gpu_fidelity.py --out DIR --tiny     # tiny shapes on the CPU: tests the script

Writes DIR/fidelity.json, DIR/fidelity.md (the tables, for benchmarks/RESULTS.md), DIR/log.txt,
DIR/run/calibration.json. Twins (17 GB for the full set) are cached outside DIR, in bench's twin
cache ($BENCH_TWIN_CACHE or ~/.cache/bench/twins) unless --twin-dir says otherwise, so a second
run reuses them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# (Q4_K_M id, Q8_0 id): the twins are made from one F16 source per model.
MODELS = (
    ("llama3.2:1b-q4_K_M", "llama3.2:1b-q8_0"),
    ("qwen2.5:1.5b-q4_K_M", "qwen2.5:1.5b-q8_0"),
    ("llama3.1:8b-q4_K_M", "llama3.1:8b-q8_0"),
)
TINY_MODELS = (("tiny-llama:q4_K_M", "tiny-llama:q8_0"), ("tiny-qwen:q4_K_M", "tiny-qwen:q8_0"))
TINY_SHAPES = {
    "tiny-llama": ("llama", "n_layer = 2\nn_embd = 256\nn_head = 4\nn_head_kv = 2\nhead_dim = 64\nn_ff = 512\n"
                            "n_vocab = 1024\ntied_embeddings = true\nattn_bias = false\ncontext_length = 4096\n"
                            "rope_freq_base = 500000.0\nnorm_eps = 1e-5\nrope_scaling = \"llama3\"\n"
                            "rope_scaling_factor = 32.0\nrope_original_context_length = 8192\n"),
    "tiny-qwen": ("qwen2", "n_layer = 2\nn_embd = 256\nn_head = 4\nn_head_kv = 2\nhead_dim = 64\nn_ff = 768\n"
                           "n_vocab = 1024\ntied_embeddings = false\nattn_bias = true\ncontext_length = 4096\n"
                           "rope_freq_base = 1000000.0\nnorm_eps = 1e-6\n"),
}
# Seconds a step may take before it is stopped (twin writing is CPU-bound; 8B sources are 16 GB).
TWIN_TIMEOUT_S = {"llama3.1:8b": 1200, "default": 600}
CALIBRATE_TIMEOUT_S = {"llama3.1:8b": 600, "default": 420}
# Rough step durations on an H100 host with 16 cores, for the time budget.
ESTIMATE_S = {"twin:llama3.1:8b": 240, "cal:llama3.1:8b": 90, "twin": 60, "cal": 50, "cal+extras": 100}

TARGET_RATIO = 0.97
TARGET_SPEEDUP = 3.0
TARGET_TELEMETRY = 0.01


class Steps:
    """Runs each step as a child process with a timeout, echoing its output with the elapsed time."""

    def __init__(self, out: Path, env: dict, budget_s: float):
        self.out = out
        self.env = env
        self.t0 = time.monotonic()
        self.budget_s = budget_s
        self.log = (out / "log.txt").open("a", buffering=1)
        self.records: list[dict] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        line = f"[{self.elapsed():6.1f}s] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")

    def fits(self, name: str, estimate_s: float) -> bool:
        if self.elapsed() + estimate_s <= self.budget_s:
            return True
        self.say(f"SKIP {name}: about {estimate_s:.0f} s more would pass the {self.budget_s:.0f} s budget "
                 f"(--budget-s to change)")
        self.records.append({"step": name, "status": "skipped (budget)", "seconds": 0.0})
        return False

    def run(self, name: str, cmd: list[str], timeout_s: float) -> tuple[str, list[str]]:
        """('ok' | 'failed (exit N)' | 'timeout', output lines)."""
        # Never run past the budget by more than a little: the results must be written in time.
        timeout_s = min(timeout_s, max(20.0, self.budget_s + 45.0 - self.elapsed()))
        self.say(f"START {name} (timeout {timeout_s:.0f} s): {' '.join(cmd)}")
        start = time.monotonic()
        lines: list[str] = []
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                    env=self.env, cwd=ROOT, start_new_session=True, errors="replace")
        except OSError as exc:
            self.say(f"FAIL {name}: could not start: {exc}")
            self.records.append({"step": name, "status": f"failed ({exc})", "seconds": 0.0})
            return "failed", lines

        def pump():
            for raw in proc.stdout:
                line = raw.rstrip()
                lines.append(line)
                self.say(f"  {name} | {line}")

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=timeout_s)
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            status = "timeout"
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=10)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
        reader.join(timeout=5)
        seconds = time.monotonic() - start
        self.say(f"{'DONE' if status == 'ok' else 'FAIL'} {name}: {status} in {seconds:.1f} s")
        self.records.append({"step": name, "status": status, "seconds": round(seconds, 1)})
        return status, lines


# --------------------------------------------------------------------------- the figures


def med(d) -> float | None:
    return (d or {}).get("median") if isinstance(d, dict) else None


def row_of(model_id: str, quant: str, cal: dict, real_bytes: int | None) -> dict:
    ip, lb, ratios = cal.get("inprocess") or {}, cal.get("llama_bench") or {}, cal.get("ratios") or {}
    n_prompt = (ip.get("settings") or {}).get("n_prompt", 512)
    tg_depth = (lb.get("tg_at_depth") or {})
    tg_depth = tg_depth.get(n_prompt) or tg_depth.get(str(n_prompt))
    file_bytes = (ip.get("model") or {}).get("file_bytes")
    roof = cal.get("roofline") or {}
    cpu_decode = med(ip.get("decode_tps_cpu_sampler"))
    return {
        "model": model_id, "quant": quant, "twin": cal.get("twin"),
        "file_gib": file_bytes / 2**30 if file_bytes else None,
        "size_vs_real": file_bytes / real_bytes if file_bytes and real_bytes else None,
        "lb_tg": med(lb.get("tg")), "lb_tg_sd": (lb.get("tg") or {}).get("sd"),
        "lb_tg_depth": med(tg_depth), "lb_pp": med(lb.get("pp")),
        "decode": med(ip.get("decode_tps")), "decode_p10": (ip.get("decode_tps") or {}).get("p10"),
        "decode_p90": (ip.get("decode_tps") or {}).get("p90"), "n": (ip.get("decode_tps") or {}).get("n"),
        "decode_empty": med(ip.get("decode_tps_empty_context")),
        "decode_cpu_sampler": cpu_decode,
        "ratio_tg": ratios.get("decode_vs_tg"), "ratio_tg_depth": ratios.get("decode_vs_tg_at_depth"),
        "ratio_empty": ratios.get("empty_context_vs_tg"),
        "ratio_cpu_sampler": cpu_decode / med(lb.get("tg")) if cpu_decode and med(lb.get("tg")) else None,
        "ttft_ms": ratios.get("ttft_ms") or med(ip.get("ttft_ms")),
        "pp_prefill_ms": ratios.get("prefill_ms_implied_by_pp"),
        "sampler": (ip.get("settings") or {}).get("sampler"),
        "flash_attn": (ip.get("settings") or {}).get("flash_attn"),
        "achieved_gbs": roof.get("achieved_gbs"), "share_of_peak": roof.get("share_of_peak"),
        "peak_gbs": roof.get("peak_gbs"),
    }


def fmt(v, digits=1, unit="") -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "on" if v else "off"
    return f"{v:,.{digits}f}{unit}"


def tables(meta: dict, rows: list[dict], extras: dict, steps: list[dict]) -> str:
    out = [f"### {meta.get('card') or 'unknown card'} — {meta.get('date')}", ""]
    out.append(f"llama-cpp-python {meta.get('llama_cpp_python')}, llama-bench build {meta.get('llama_bench_build') or '—'}, "
               f"{meta.get('cpu_cores')} CPU cores, driver {meta.get('driver') or '—'}, peak memory bandwidth "
               f"{fmt(meta.get('peak_gbs'), 0, ' GB/s')} ({meta.get('peak_source') or '—'}). Random-weight twins; "
               f"{meta.get('reps')} reps, medians; prompt {meta.get('n_prompt')} tokens, {meta.get('n_gen')} generated.")
    out.append("")
    tg, pp = f"tg{meta.get('n_gen')}", meta.get("n_prompt")
    out.append(f"| model (twin) | quant | GiB (×real) | llama-bench {tg} t/s | {tg} @{pp} | in-process decode t/s "
               f"(p10–p90) | × {tg} | × {tg}@{pp} | empty ctx × {tg} | CPU sampler × {tg} | TTFT ms / pp-implied "
               "| weight GB/s (% peak) |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        size = f"{fmt(r['file_gib'], 2)} ({fmt(r['size_vs_real'], 3)})"
        dec = f"{fmt(r['decode'])} ({fmt(r['decode_p10'])}–{fmt(r['decode_p90'])}, n={r['n'] or '—'})"
        ttft = f"{fmt(r['ttft_ms'])} / {fmt(r['pp_prefill_ms'])}"
        roof = f"{fmt(r['achieved_gbs'], 0)} ({fmt(100 * r['share_of_peak'] if r['share_of_peak'] else None, 0, '%')})"
        out.append(f"| {r['model']} | {r['quant']} | {size} | {fmt(r['lb_tg'])} | {fmt(r['lb_tg_depth'])} | {dec} | "
                   f"**{fmt(r['ratio_tg'], 3)}** | {fmt(r['ratio_tg_depth'], 3)} | {fmt(r['ratio_empty'], 3)} | "
                   f"{fmt(r['ratio_cpu_sampler'], 3)} | {ttft} | {roof} |")
    par = extras.get("parallel")
    if par:
        out += ["", "| throughput mode | sequences | aggregate decode t/s | single-stream t/s | speedup | "
                    "wall-clock aggregate t/s | TTFT ms p50 | latency ms p50 | per-stream t/s |",
                "|---|---|---|---|---|---|---|---|---|",
                f"| {par['model']} {par['quant']} | {par['n_parallel']} | {fmt(med(par['aggregate_decode_tps']))} | "
                f"{fmt(par['single_stream'])} | **{fmt(par['speedup_vs_single_stream'], 2, '×')}** | "
                f"{fmt(med(par['aggregate_tps']))} | {fmt(med(par['ttft_ms']))} | {fmt(med(par['latency_ms']))} | "
                f"{fmt(med(par['per_stream_decode_tps']))} |"]
    tel = extras.get("telemetry")
    if tel:
        out += ["", "| telemetry overhead | NVML | decode t/s off | decode t/s at 20 Hz | difference |",
                "|---|---|---|---|---|",
                f"| {tel['model']} {tel['quant']} | {'yes' if tel.get('nvml') else 'no'} | {fmt(med(tel['off_tps']))} "
                f"(n={tel['off_tps']['n']}) | {fmt(med(tel['on_tps']))} (n={tel['on_tps']['n']}) | "
                f"**{fmt(100 * tel['diff_share'] if tel.get('diff_share') is not None else None, 2, '%')}** |"]
    def verdict(v):
        return "—" if v is None else ("MET" if v >= TARGET_RATIO else "missed")

    out += ["", f"Target in-process decode ≥ {TARGET_RATIO} × llama-bench (after the {pp}-token prompt vs {tg} "
                f"from empty / same work: vs {tg}@{pp}, and empty context vs {tg}): "
            + "; ".join(f"{r['model']} {r['quant']} {verdict(r['ratio_tg'])} / {verdict(r['ratio_tg_depth'])}, "
                        f"{verdict(r['ratio_empty'])}" for r in rows if r.get("ratio_tg") is not None)]
    if par and par.get("speedup_vs_single_stream") is not None:
        out.append(f"Throughput ×{par['n_parallel']} ≥ {TARGET_SPEEDUP}× single stream: "
                   f"{'MET' if par['speedup_vs_single_stream'] >= TARGET_SPEEDUP else 'missed'}")
    if tel and tel.get("diff_share") is not None:
        out.append(f"Telemetry at 20 Hz within {100 * TARGET_TELEMETRY:.0f}%: "
                   f"{'MET' if abs(tel['diff_share']) <= TARGET_TELEMETRY else 'missed'}")
    bad = [s for s in steps if s["status"] != "ok"]
    if bad:
        out += ["", "Steps that did not finish: " + "; ".join(f"{s['step']} ({s['status']})" for s in bad)]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- the run


def probe(steps: Steps, python: str, manifest_args: list[str]) -> dict:
    meta: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu_cores": os.cpu_count()}
    status, lines = steps.run("probe llama-cpp-python", [python, "-m", "bench.engine.worker", "--probe"], 180)
    try:
        facts = json.loads(lines[-1])
        meta["llama_cpp_python"] = facts.get("version")
        meta["gpu_offload"] = facts.get("supports_gpu_offload")
    except (IndexError, ValueError):
        meta["gpu_offload"] = None
    status, lines = steps.run("probe hardware", [python, "-m", "bench", *manifest_args, "hw", "--json"], 120)
    try:
        text = "\n".join(lines)
        hw = json.loads(text[text.index("{"):])
        gpu = (hw.get("gpus") or [{}])[0]
        meta.update(card=gpu.get("name"), driver=gpu.get("driver_version"), peak_gbs=gpu.get("peak_mem_bandwidth_gbs"),
                    peak_source="nvml" if gpu.get("peak_mem_bandwidth_gbs") else None)
    except (ValueError, AttributeError, IndexError):
        pass
    return meta


def tiny_manifest(out: Path) -> Path:
    blocks = ["schema_version = 1\n"]
    for family, (arch, shape) in TINY_SHAPES.items():
        for quant, tag in (("Q4_K_M", "q4_K_M"), ("Q8_0", "q8_0")):
            blocks.append(f'[[model]]\nid = "{family}:{tag}"\nfamily = "{family}"\nparams_b = 0.001\ntier = "A"\n'
                          f'arch = "{arch}"\nquant = "{quant}"\nsource = "local"\npath = "none.gguf"\n'
                          f"[model.shape]\n{shape}")
    path = out / "tiny_manifest.toml"
    path.write_text("\n".join(blocks))
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="Folder for fidelity.json, fidelity.md, log.txt.")
    p.add_argument("--quick", action="store_true", help="llama3.2:1b Q4_K_M only, 3 reps (a smoke run).")
    p.add_argument("--tiny", action="store_true", help="Tiny shapes on the CPU (debugging the script).")
    p.add_argument("--llama-bench", default=None, help="llama-bench (default: the one on PATH).")
    p.add_argument("--reps", type=int, help="Repetitions (default 5; 3 with --quick).")
    p.add_argument("--parallel", type=int, default=8, help="Sequences in throughput mode (0 = skip).")
    p.add_argument("--twin-dir", type=Path, help="Twin cache (default: bench's, ~/.cache/bench/twins).")
    p.add_argument("--budget-s", type=float, default=540.0,
                   help="Skip steps that would end past this many seconds (default 540: the run ends, "
                   "with its results written, inside a 10-minute command limit).")
    p.add_argument("--models", help="Comma-separated Q4_K_M ids to run (default: all three).")
    args = p.parse_args(argv)

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    from bench.twin import twin_cache_dir

    twin_dir = (args.twin_dir or twin_cache_dir()).resolve()
    reps = args.reps or (3 if args.quick or args.tiny else 5)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    steps = Steps(out, env, args.budget_s)
    python = sys.executable
    manifest_args: list[str] = []
    models = TINY_MODELS if args.tiny else MODELS
    if args.tiny:
        manifest_args = ["--manifest", str(tiny_manifest(out))]
    if args.models:
        wanted = [m.strip() for m in args.models.split(",")]
        models = tuple(m for m in models if m[0] in wanted)
    if args.quick:
        models = ((models[0][0], None),)

    exe = args.llama_bench or shutil.which("llama-bench")
    if exe is None:
        steps.say("WARNING: no llama-bench on PATH (pass --llama-bench): in-process figures only, no ratios")
    steps.say(f"gpu_fidelity: {len(models)} model(s), reps {reps}, out {out}, twins in {twin_dir}, llama-bench {exe}")

    meta = probe(steps, python, manifest_args)
    meta.update(reps=reps, n_prompt=32 if args.tiny else 512, n_gen=16 if args.tiny else 128, llama_bench=exe,
                mode="tiny (CPU)" if args.tiny else ("quick" if args.quick else "full"))
    if not args.tiny and not meta.get("gpu_offload"):
        steps.say("ERROR: this llama-cpp-python cannot offload to a GPU; this benchmark needs a CUDA build "
                  "(or --tiny to test the script on the CPU)")
        return 2
    steps.say(f"card {meta.get('card')}, peak {meta.get('peak_gbs')} GB/s, llama-cpp-python {meta.get('llama_cpp_python')}")

    from bench.manifest import load_manifest

    manifest = load_manifest(manifest_args[1] if manifest_args else None)
    rows: list[dict] = []
    extras: dict = {}
    run_dir = out / "run"
    run_dir.mkdir(exist_ok=True)
    (out / "cal").mkdir(exist_ok=True)

    def save() -> None:
        doc = {"meta": meta, "rows": rows, "extras": extras, "steps": steps.records}
        (out / "fidelity.json").write_text(json.dumps(doc, indent=2, default=str))
        (out / "fidelity.md").write_text(tables(meta, rows, extras, steps.records))

    first = True
    for q4_id, q8_id in models:
        family = q4_id.rsplit("-", 1)[0] if re.search(r"-q\d", q4_id) else q4_id.split(":")[0]
        ids = {"Q4_K_M": q4_id, "Q8_0": q8_id} if q8_id else {"Q4_K_M": q4_id}
        big = family in ("llama3.1:8b",)
        if not steps.fits(f"twin {family}", ESTIMATE_S["twin:llama3.1:8b" if big else "twin"]):
            continue
        cmd = [python, "-m", "bench", *manifest_args, "twin", q4_id, "--cache-dir", str(twin_dir)]
        for quant in ids:
            cmd += ["--quant", quant]
        status, lines = steps.run(f"twin {family}", cmd, TWIN_TIMEOUT_S["llama3.1:8b" if big else "default"])
        paths = {}
        for line in lines:
            m = re.match(r"twin of (\S+) at (Q4_K_M|Q8_0): (.+?) \(", line)
            if m:
                paths[m.group(2)] = m.group(3)
        if status != "ok" or not paths:
            save()
            continue
        for quant, model_id in ids.items():
            if quant not in paths:
                continue
            extra_flags = []
            if first:
                if args.parallel:
                    extra_flags += ["--parallel", str(args.parallel)]
                extra_flags += ["--telemetry-overhead", str(reps)]
            estimate = ESTIMATE_S["cal:llama3.1:8b" if big else ("cal+extras" if extra_flags else "cal")]
            if not steps.fits(f"calibrate {model_id}", estimate):
                continue
            json_path = out / "cal" / (re.sub(r"[^A-Za-z0-9._-]+", "_", model_id) + ".json")
            json_path.unlink(missing_ok=True)
            cmd = [python, "-m", "bench", *manifest_args, "calibrate", paths[quant], "--reps", str(reps),
                   "--run", str(run_dir), "--json", str(json_path), "--cpu-sampler-reps", str(min(reps, 3)),
                   *extra_flags]
            if exe:
                cmd += ["--llama-bench", exe]
            if args.tiny:
                cmd += ["--cpu", "--threads", "1", "--n-prompt", "32", "--n-gen", "16", "--sampler", "gpu"]
            timeout = CALIBRATE_TIMEOUT_S["llama3.1:8b" if big else "default"]
            status, _ = steps.run(f"calibrate {model_id}", cmd, timeout)
            if status.startswith("failed") and "--sampler" not in cmd:
                # GPU-side sampling is experimental in llama.cpp: if it took the process down, the
                # CPU sampler still gives this row (marked by its sampler column).
                status, _ = steps.run(f"calibrate {model_id} (CPU sampler)", cmd + ["--sampler", "cpu"], timeout)
            if json_path.is_file():
                cal = json.loads(json_path.read_text())
                info = (cal.get("llama_bench") or {}).get("info") or {}
                if info.get("build_commit") and not meta.get("llama_bench_build"):
                    meta["llama_bench_build"] = f"{info['build_commit']} ({info.get('build_number')})"
                    meta["llama_bench_gpu_info"] = info.get("gpu_info")
                    meta["card"] = meta.get("card") or info.get("gpu_info")
                real = _real_bytes(manifest, model_id)
                rows.append(row_of(model_id, quant, cal, real))
                ip = cal.get("inprocess") or {}
                if ip.get("parallel"):
                    par = dict(ip["parallel"], model=model_id, quant=quant, single_stream=med(ip.get("decode_tps")))
                    extras["parallel"] = par
                if ip.get("telemetry_overhead"):
                    extras["telemetry"] = dict(ip["telemetry_overhead"], model=model_id, quant=quant)
                steps.say("ROW " + json.dumps({k: rows[-1][k] for k in ("model", "quant", "lb_tg", "decode",
                                                                           "ratio_tg", "ratio_tg_depth")}))
            if first and status == "ok":
                first = False
            save()
    save()
    text = tables(meta, rows, extras, steps.records)
    print("\n" + text, flush=True)
    steps.say(f"finished in {steps.elapsed():.0f} s; wrote {out / 'fidelity.md'} and {out / 'fidelity.json'}")
    return 0 if rows and all(s["status"] == "ok" for s in steps.records) else 1


def _real_bytes(manifest, model_id: str) -> int | None:
    try:
        return manifest.get(model_id).size_bytes
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    sys.exit(main())
