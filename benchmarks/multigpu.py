"""Multi-GPU scale-out: N configurations on N GPUs at once (`bench profile --gpus`), one table.

Writes a random-weight twin (`bench twin`, default llama3.2:1b at Q4_K_M, about 0.8 GB), registers
it as one configuration per GPU in a local manifest, runs `bench profile --gpus all --ignore-eos`
(random weights would stop at random EOS tokens) over them,
and prints per configuration: its GPU (NVML index and UUID), n requests, median decode speed with
p10–p90, and wall time; then the run's total wall time against the sum of the configurations'
wall times, which is what running them one after another would have cost (load times included).

    python benchmarks/multigpu.py --out DIR                  # twin, one configuration per GPU
    python benchmarks/multigpu.py --out DIR --per-gpu 2      # two configurations queued per GPU
    python benchmarks/multigpu.py --out DIR --split          # one configuration over every GPU as well
    python benchmarks/multigpu.py --summarize RUN_DIR        # the table for any bench run directory

Needs two or more NVIDIA GPUs and a CUDA build of llama-cpp-python (not Ray). Writes DIR/run/
(the run directory), DIR/multigpu.md and DIR/multigpu.json.
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

DEFAULT_TWIN_OF = "llama3.2:1b-q4_K_M"


def bench(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    print("$ bench " + " ".join(args), flush=True)
    return subprocess.run([sys.executable, "-m", "bench", *args], text=True, timeout=timeout, env=env, cwd=ROOT)


# --------------------------------------------------------------------------- the table


def summarize(run_dir: str | Path) -> dict:
    """Per configuration and for the whole run, from the run directory alone."""
    from bench.engine.stats import spread
    from bench.rundir import RunDir

    run = RunDir.open(run_dir)
    latest = {c.config_id: c for c in run.configs()}
    by_config: dict[str, list] = {}
    for r in run.requests():
        by_config.setdefault(r.config_id, []).append(r)
    rows = []
    for config_id, config in latest.items():
        reqs = by_config.get(config_id, [])
        tps = spread([r.decode_tps for r in reqs])
        wall_s = (config.t_end_unix - config.t_start_unix) if config.t_start_unix and config.t_end_unix else None
        rows.append({
            "config_id": config_id,
            "status": config.status,
            "gpu_index": config.extra.get("gpu_indices") or config.extra.get("gpu_index"),
            "gpu_uuid": config.extra.get("gpu_uuids") or config.gpu_uuid,
            "n_requests": len(reqs),
            "decode_tps_median": tps.median, "decode_tps_p10": tps.p10, "decode_tps_p90": tps.p90,
            "wall_s": wall_s,
            "t_start_unix": config.t_start_unix, "t_end_unix": config.t_end_unix,
        })
    starts = [r["t_start_unix"] for r in rows if r["t_start_unix"]]
    ends = [r["t_end_unix"] for r in rows if r["t_end_unix"]]
    total_s = max(ends) - min(starts) if starts and ends else None
    sequential_s = sum(r["wall_s"] for r in rows if r["wall_s"] is not None)
    gpus = run.meta().get("gpu_pool", {}).get("gpus") or []
    return {
        "run_dir": str(run.path), "gpus": gpus, "rows": rows, "total_wall_s": total_s,
        "sequential_sum_s": sequential_s,
        "speedup": sequential_s / total_s if total_s else None,
    }


def _num(value, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _gpu_text(index, uuid) -> str:
    if isinstance(index, list):
        return "+".join(str(i) for i in index) + " (" + ", ".join(u[:12] for u in uuid or []) + ")"
    return f"{index} ({(uuid or '—')[:12]})" if index is not None else "—"


def markdown(summary: dict) -> str:
    lines = [
        "| configuration | GPU (NVML index, UUID) | status | n requests | decode tok/s, median (p10–p90) | wall s |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in summary["rows"]:
        tps = (f"{_num(r['decode_tps_median'], 1)} ({_num(r['decode_tps_p10'], 1)}–{_num(r['decode_tps_p90'], 1)})"
               if r["decode_tps_median"] is not None else "—")
        lines.append(f"| {r['config_id']} | {_gpu_text(r['gpu_index'], r['gpu_uuid'])} | {r['status']} | "
                     f"{r['n_requests']} | {tps} | {_num(r['wall_s'], 1)} |")
    n = len(summary["rows"])
    lines += [
        "",
        f"Total wall time {_num(summary['total_wall_s'], 1)} s for {n} configurations at once; one after another "
        f"they took {_num(summary['sequential_sum_s'], 1)} s (sum of their wall times, loads included): "
        f"{_num(summary['speedup'], 2)}× faster.",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the run


def n_gpus() -> int:
    from hwprobe.nvml import NvmlSession

    with NvmlSession() as session:
        return session.device_count()


def make_model(out: Path, twin_of: str, gguf: str | None) -> Path:
    if gguf:
        return Path(gguf).resolve()
    path = out / f"twin-{twin_of.replace(':', '_')}.gguf"
    if not path.is_file():
        quant = "Q8_0" if twin_of.lower().endswith("q8_0") else "Q4_K_M"
        made = bench("twin", twin_of, "--quant", quant, "--out", str(path))
        if made.returncode != 0:
            sys.exit(f"bench twin {twin_of} failed (exit {made.returncode})")
    return path


def write_manifest(path: Path, ids: list[str], gguf: Path) -> Path:
    blocks = ["schema_version = 1\n"]
    for model_id in ids:
        blocks.append(
            f'[[model]]\nid = "{model_id}"\nfamily = "twin"\nparams_b = 1.0\ntier = "A"\narch = "llama"\n'
            f'quant = "Q4_K_M"\nsource = "local"\npath = "{gguf}"\n'
        )
    path.write_text("\n".join(blocks))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="Output folder (run directory, tables).")
    ap.add_argument("--twin-of", default=DEFAULT_TWIN_OF, help="Manifest model whose twin to run.")
    ap.add_argument("--gguf", help="Use this GGUF instead of writing a twin.")
    ap.add_argument("--per-gpu", type=int, default=1, help="Configurations per GPU (queued).")
    ap.add_argument("--split", action="store_true", help="Add one configuration split over every GPU.")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--summarize", type=Path, help="Only print the table of this run directory.")
    args = ap.parse_args(argv)

    if args.summarize:
        from bench.errors import BenchError

        try:
            summary = summarize(args.summarize)
        except BenchError as exc:
            sys.exit(f"error: {exc}")
        print(markdown(summary))
        return 0
    if args.out is None:
        ap.error("--out is required (or --summarize RUN_DIR)")
    count = n_gpus()
    if count < 2:
        sys.exit(f"needs two or more NVIDIA GPUs; NVML sees {count}")
    args.out.mkdir(parents=True, exist_ok=True)
    gguf = make_model(args.out, args.twin_of, args.gguf)
    ids = [f"twin-{i}" for i in range(count * args.per_gpu)]
    extra = ["--split", "twin-split"] if args.split else []
    manifest = write_manifest(args.out / "models.toml", ids + (["twin-split"] if args.split else []), gguf)
    run_dir = args.out / "run"
    if (run_dir / "run.json").exists():
        sys.exit(f"{run_dir} holds a run already; pick another --out")
    t0 = time.time()
    result = bench("--manifest", str(manifest), "profile", *ids, *(["twin-split"] if args.split else []),
                   "--gpus", "all", *extra, "--preset", args.preset, "--max-tokens", str(args.max_tokens),
                   "--ignore-eos", "--no-score", "--no-download", "--out", str(run_dir))
    elapsed = time.time() - t0
    if not (run_dir / "run.json").exists():
        sys.exit(f"bench profile wrote no run (exit {result.returncode})")
    summary = summarize(run_dir)
    summary["command_wall_s"] = elapsed
    summary["exit_code"] = result.returncode
    text = markdown(summary)
    (args.out / "multigpu.md").write_text(text + "\n")
    (args.out / "multigpu.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(text)
    print(f"\n(bench profile itself took {elapsed:.1f} s, exit {result.returncode}; "
          f"{args.out / 'multigpu.md'}, {args.out / 'multigpu.json'})")
    return 0 if result.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
