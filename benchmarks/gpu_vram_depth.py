"""GPU check of bench.vram and bench sweep: is the VRAM prediction within 5% of NVML, and how does
decode slow down with KV depth? One fast run, two tables.

1. Writes three random-weight twins with `bench twin ID --quant Q --out FILE` (exact shapes,
   llama.cpp's own quantizer): llama3.2:1b Q4_K_M, qwen2.5:1.5b Q8_0, gemma3:1b Q4_K_M (three
   architectures, tied and untied embeddings, GQA and gemma3's sliding-window layers).
2. For each twin runs `bench sweep TWIN -d 0 -p 512 -n 32 --reps 1 --flash-attn on` (n_ctx 768): the
   sweep child predicts the VRAM before loading (bench.vram.predict_vram), loads every layer on the
   GPU, warms up, and records NVML's measurement (per process, else the rise in device use) and
   llama.cpp's own buffer sizes in configs.jsonl. The table shows predicted vs measured and the
   CUDA overhead the measurement implies (measured - llama.cpp's device buffers), i.e. the value
   that $BENCH_VRAM_OVERHEAD_MIB / bench.vram.DEFAULT_OVERHEAD_MIB should take on this host.
3. Runs a depth sweep of the first twin: `-d 0,2048,8192 --flash-attn on,off --kv-type f16,q8_0
   --reps 2` (q8_0 without flash attention is refused by llama.cpp and recorded as failed), and
   prints bench's own summary table.

    python benchmarks/gpu_vram_depth.py                   # about 3-5 min on an H100 host, mostly twin writing
    python benchmarks/gpu_vram_depth.py --out DIR --twin-dir DIR/twins
    python benchmarks/gpu_vram_depth.py --skip-depth      # the VRAM table only
    python benchmarks/gpu_vram_depth.py --tiny            # the tiny test model on the CPU: tests the script

Exit status: 0 when every twin's prediction is within 5% of the measurement, 1 otherwise, 2 when
there is no usable GPU (no NVML, or a CPU-only llama-cpp-python build).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TWINS = (("llama3.2:1b-q4_K_M", "Q4_K_M"), ("qwen2.5:1.5b-q8_0", "Q8_0"), ("gemma3:1b-q4_K_M", "Q4_K_M"))
TOLERANCE_PCT = 5.0
MIB = 2**20


def bench(*args: str, timeout_s: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "bench", *args]
    print("$ bench " + " ".join(args), flush=True)
    return subprocess.run(cmd, env=env, text=True, capture_output=True, timeout=timeout_s)


def gpu_ready() -> str | None:
    """Why this host cannot run the check, or None."""
    from bench.vram import gpu_memory

    memory = gpu_memory(0)
    if memory.free_bytes is None:
        return f"no NVIDIA GPU through NVML ({memory.reason})"
    probe = subprocess.run([sys.executable, "-m", "bench.engine.worker", "--probe"], text=True, capture_output=True,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)})
    try:
        facts = json.loads(probe.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return f"cannot probe llama-cpp-python: {probe.stderr.strip()[-200:]}"
    if not facts.get("supports_gpu_offload"):
        return "llama-cpp-python is built without GPU offload (reinstall it with CMAKE_ARGS=-DGGML_CUDA=on)"
    return None


def make_twin(model_id: str, quant: str, twin_dir: Path) -> Path:
    path = twin_dir / f"{model_id.replace(':', '_')}.{quant}.gguf"
    if path.is_file():
        return path
    result = bench("twin", model_id, "--quant", quant, "--out", str(path), timeout_s=1200)
    if result.returncode != 0 or not path.is_file():
        raise SystemExit(f"bench twin {model_id} failed: {(result.stderr or result.stdout).strip()[-400:]}")
    return path


def vram_row(model_id: str, twin: Path, out: Path, device: tuple[str, ...] = ("--gpu",)) -> dict:
    run = out / f"vram-{model_id.replace(':', '_')}"
    result = bench("sweep", str(twin), *device, "-d", "0", "-p", "512", "-n", "32", "--reps", "1",
                   "--flash-attn", "on", "--order", "grid", "--out", str(run))
    configs = [json.loads(line) for line in (run / "configs.jsonl").read_text().splitlines() if line.strip()] \
        if (run / "configs.jsonl").exists() else []
    rec = configs[-1] if configs else {}
    extra = rec.get("extra", {})
    buffers = extra.get("vram_llama_buffers_bytes") or {}
    prediction = extra.get("vram_prediction") or {}
    measured = extra.get("vram_measured_bytes")
    row = {
        "model": model_id, "twin": twin.name, "status": rec.get("status", "no record"),
        "error": rec.get("error") or (result.stderr.strip()[-300:] if result.returncode not in (0, 1) else None),
        "predicted": extra.get("vram_predicted_bytes"), "measured": measured,
        "source": extra.get("vram_measured_source"), "error_pct": extra.get("vram_prediction_error_pct"),
        "pred_weights": prediction.get("weights_bytes"), "pred_kv": prediction.get("kv_bytes"),
        "pred_compute": prediction.get("compute_bytes"), "pred_overhead": prediction.get("overhead_bytes"),
        "llama_model": buffers.get("model"), "llama_kv": buffers.get("KV"), "llama_compute": buffers.get("compute"),
        "spill": extra.get("spill"),
    }
    if measured is not None and buffers:
        row["implied_overhead"] = measured - sum(buffers.values())
    return row


def _mib(value) -> str:
    return "—" if value is None else f"{value / MIB:.0f}"


def print_vram_table(rows: list[dict]) -> None:
    header = ("twin", "pred MiB", "meas MiB", "src", "err %", "weights p/ll", "KV p/ll", "compute p/ll",
              "overhead p/implied", "within 5%")
    lines = [header]
    for r in rows:
        ok = r["error_pct"] is not None and abs(r["error_pct"]) <= TOLERANCE_PCT
        lines.append((
            r["model"], _mib(r["predicted"]), _mib(r["measured"]), r["source"] or "—",
            f"{r['error_pct']:+.1f}" if r["error_pct"] is not None else "—",
            f"{_mib(r['pred_weights'])}/{_mib(r['llama_model'])}", f"{_mib(r['pred_kv'])}/{_mib(r['llama_kv'])}",
            f"{_mib(r['pred_compute'])}/{_mib(r['llama_compute'])}",
            f"{_mib(r['pred_overhead'])}/{_mib(r.get('implied_overhead'))}",
            "yes" if ok else ("no" if r["error_pct"] is not None else f"— ({r['status']}: {r['error']})"),
        ))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)))
    implied = [r["implied_overhead"] for r in rows if r.get("implied_overhead") is not None]
    if implied:
        mean = sum(implied) / len(implied)
        print(f"\nimplied CUDA overhead: mean {mean / MIB:.0f} MiB over {len(implied)} twin(s) "
              f"(range {min(implied) / MIB:.0f}-{max(implied) / MIB:.0f}); set BENCH_VRAM_OVERHEAD_MIB={mean / MIB:.0f} "
              "or bench.vram.DEFAULT_OVERHEAD_MIB to calibrate.")
        refit = [100 * (r["predicted"] - r["pred_overhead"] + mean - r["measured"]) / r["measured"]
                 for r in rows if r.get("implied_overhead") is not None and r.get("pred_overhead") is not None
                 and r["predicted"] and r["measured"]]
        if refit:  # a record without the prediction's parts cannot be refitted (and must not stop the table)
            print("errors with that overhead: " + ", ".join(f"{e:+.1f}%" for e in refit))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_vram_depth") / time.strftime("%Y%m%dT%H%M%S"))
    parser.add_argument("--twin-dir", type=Path, help="Where twins are written / reused (default OUT/../twins).")
    parser.add_argument("--skip-depth", action="store_true", help="Only the VRAM table.")
    parser.add_argument("--tiny", action="store_true",
                        help="The tiny test model on the CPU (no VRAM figures): checks the script itself.")
    args = parser.parse_args(argv)
    why = None if args.tiny else gpu_ready()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    twin_dir = args.twin_dir or args.out.parent / "twins"
    twin_dir.mkdir(parents=True, exist_ok=True)

    if args.tiny:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_gguf import write_tiny_gguf

        twins = [("tiny", write_tiny_gguf(twin_dir / "tiny.gguf", n_embd=128, n_head=4, n_head_kv=2, n_ff=256))]
        device: tuple[str, ...] = ("--cpu", "--threads", "1", "--sample-hz", "0")
    else:
        twins = [(model_id, make_twin(model_id, quant, twin_dir)) for model_id, quant in TWINS]
        device = ("--gpu",)
    rows = [vram_row(model_id, path, args.out, device) for model_id, path in twins]
    (args.out / "vram.json").write_text(json.dumps(rows, indent=2))
    print("\n== VRAM: predicted (bench.vram) vs measured (NVML), 512-token prefill (n_ctx 768), flash attention on ==")
    print("p = predicted, ll = llama.cpp's own device buffers; implied overhead = measured - llama.cpp buffers")
    print_vram_table(rows)

    if not args.skip_depth:
        model_id, path = twins[0]
        run = args.out / "depth"
        print(f"\n== Depth sweep of the {model_id} twin ==")
        depths = "0,64" if args.tiny else "0,2048,8192"
        result = bench("sweep", str(path), *device, "-d", depths, "--flash-attn", "on,off", "--kv-type",
                       "f16,q8_0", "--reps", "2", "-p", "512", "-n", "128", "--seed", "1", "--out", str(run))
        print(result.stdout[-6000:])
        if result.returncode not in (0, 1):
            print(result.stderr[-2000:], file=sys.stderr)
    within = [r["error_pct"] is not None and abs(r["error_pct"]) <= TOLERANCE_PCT for r in rows]
    print(f"\n{sum(within)}/{len(rows)} predictions within {TOLERANCE_PCT:.0f}% of NVML; results in {args.out}")
    return 0 if all(within) else 1


if __name__ == "__main__":
    sys.exit(main())
