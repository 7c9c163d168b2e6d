"""`bench calibrate`: the in-process loop beside llama-bench, on the tiny model on the CPU.

llama-bench itself is stood in for by a script that answers exactly as llama-bench's JSON printer
does (field names and layout from llama.cpp's tools/llama-bench), with fixed figures, so the
ratios the command prints can be checked by hand. Set LLAMA_BENCH to a real binary to also run
the real thing.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench import calibration as cal
from bench import roofline

REPO = Path(__file__).resolve().parents[1]
FAST = ["--cpu", "--threads", "1", "--reps", "2", "--n-prompt", "32", "--n-gen", "8"]

FAKE_LLAMA_BENCH = textwrap.dedent('''\
    #!{python}
    """Answers like llama-bench -o json: pp and tg tests at each depth, samples_ts per rep."""
    import json, os, sys
    args = sys.argv[1:]
    def opt(name, default):
        return args[args.index(name) + 1] if name in args else default
    if "-d" in args and os.environ.get("FAKE_NO_DEPTH"):
        print("error: invalid parameter for argument: -d", file=sys.stderr)
        sys.exit(1)
    if os.environ.get("FAKE_FAIL"):
        print("main: error: failed to load model", file=sys.stderr)
        sys.exit(1)
    n_prompt, n_gen, reps = int(opt("-p", 512)), int(opt("-n", 128)), int(opt("-r", 5))
    depths = [int(d) for d in opt("-d", "0").split(",")]
    print("llama-bench: benchmark 1/4: starting", file=sys.stderr)
    tests = []
    for n_p, n_g, ts in ((n_prompt, 0, 20000.0), (0, n_gen, 100.0)):
        for d in depths:
            rate = ts * (0.9 if d else 1.0)
            samples = [rate, rate, rate - 1.0, rate + 1.0, rate][:reps]
            tests.append({{"build_commit": "abc1234", "build_number": 1, "cpu_info": "fake", "gpu_info": "Fake GPU",
                          "backends": "CUDA", "model_filename": opt("-m", ""), "model_type": "llama ?B Q4_K - Medium",
                          "model_size": 1000, "model_n_params": 100, "n_batch": 2048, "n_ubatch": 512,
                          "n_threads": 16, "n_gpu_layers": int(opt("-ngl", 99)), "flash_attn": int(opt("-fa", 0)),
                          "n_prompt": n_p, "n_gen": n_g, "n_depth": d, "test_time": "2026-01-01T00:00:00Z",
                          "avg_ns": 1, "stddev_ns": 0, "avg_ts": sum(samples) / len(samples), "stddev_ts": 0.8,
                          "samples_ns": [1] * len(samples), "samples_ts": samples}})
    print(json.dumps(tests, indent=2))
''')


@pytest.fixture
def fake_llama_bench(tmp_path) -> Path:
    path = tmp_path / "llama-bench"
    path.write_text(FAKE_LLAMA_BENCH.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def bench(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), **(env or {}))
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, timeout=600,
                          env=full_env, cwd=cwd)


def _calibrations(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "calibration.json").read_text())["calibrations"]


# --------------------------------------------------------------------------- parsing llama-bench


def test_parse_llama_bench_reads_pp_tg_and_depth_tests(fake_llama_bench):
    out = subprocess.run([str(fake_llama_bench), "-m", "x.gguf", "-p", "512", "-n", "128", "-r", "5", "-d", "0,512"],
                         capture_output=True, text=True, check=True).stdout
    parsed = cal.parse_llama_bench(out, 512, 128)
    assert parsed["tg"]["median"] == 100.0 and parsed["tg"]["n"] == 5
    assert parsed["pp"]["median"] == 20000.0
    assert parsed["tg_at_depth"][512]["median"] == pytest.approx(90.0)
    assert parsed["info"]["gpu_info"] == "Fake GPU" and parsed["info"]["flash_attn"] == 0


def test_parse_llama_bench_refuses_output_without_the_tests():
    with pytest.raises(cal.CalibrationError, match="no JSON"):
        cal.parse_llama_bench("error: something", 512, 128)
    with pytest.raises(cal.CalibrationError, match="no pp512 or tg128"):
        cal.parse_llama_bench(json.dumps([{"n_prompt": 64, "n_gen": 0, "samples_ts": [1.0]}]), 512, 128)


def test_llama_bench_without_depth_support_is_run_again_without_it(fake_llama_bench, monkeypatch):
    monkeypatch.setenv("FAKE_NO_DEPTH", "1")
    notes = []
    parsed = cal.run_llama_bench(str(fake_llama_bench), "x.gguf", 64, 16, 3, (0, 64), log=notes.append)
    assert parsed["tg"]["median"] == 100.0 and parsed["tg_at_depth"] == {}
    assert "-d" not in parsed["command"] and notes


def test_ratios_follow_their_definitions():
    inproc = {"decode_tps": {"median": 97.0}, "decode_tps_empty_context": {"median": 99.0}, "ttft_ms": {"median": 30.0}}
    lb = {"tg": {"median": 100.0}, "tg_at_depth": {512: {"median": 96.0}}, "pp": {"median": 20000.0}}
    r = cal.compare(inproc, lb, 512)
    assert r["decode_vs_tg"] == pytest.approx(0.97)
    assert r["decode_vs_tg_at_depth"] == pytest.approx(97 / 96)
    assert r["empty_context_vs_tg"] == pytest.approx(0.99)
    assert r["prefill_ms_implied_by_pp"] == pytest.approx(512 / 20000 * 1000)
    assert r["ttft_vs_pp_prefill"] == pytest.approx(30.0 / 25.6)
    assert cal.compare(inproc, None, 512)["decode_vs_tg"] is None


# --------------------------------------------------------------------------- roofline


def test_roofline_uses_nvml_peak_else_the_card_table():
    assert roofline.peak_bandwidth({"peak_mem_bandwidth_gbs": 3352.3, "name": "NVIDIA H100 80GB HBM3"}) == (3352.3, "nvml")
    assert roofline.peak_bandwidth({"name": "NVIDIA H100 PCIe"}) == (2000.0, "table:NVIDIA H100 PCIe")
    assert roofline.peak_bandwidth({"name": "NVIDIA H200"})[0] == 4800.0
    assert roofline.peak_bandwidth({"name": "Mystery card"}) == (None, None)
    fig = roofline.roofline(800_000_000, 1000.0, 3200.0, "nvml")
    assert fig["achieved_gbs"] == pytest.approx(800.0) and fig["share_of_peak"] == pytest.approx(0.25)
    assert roofline.roofline(None, 10.0, 1.0) is None
    assert roofline.request_figures(10**9, 2.0, 4.0) == {"weight_gbs": 2.0, "weight_bw_share": 0.5}
    assert "25%" in roofline.describe(fig)


# --------------------------------------------------------------------------- the command


def test_calibrate_in_process_only_stores_its_figures(tiny_models, tmp_path):
    result = bench("calibrate", str(tiny_models["tiny"]), *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no llama-bench given: in-process figures only" in result.stdout
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    (c,) = _calibrations(runs[0])
    ip = c["inprocess"]
    assert ip["decode_tps"]["n"] == 2 and ip["decode_tps"]["median"] > 0
    assert ip["decode_tps_empty_context"]["median"] > 0
    assert ip["settings"]["n_prompt"] == 32 and ip["settings"]["ignore_eos"] is True
    assert ip["settings"]["sampler"] == "cpu"  # auto on a CPU run
    assert c["llama_bench"] is None and c["ratios"]["decode_vs_tg"] is None
    assert c["twin"] is False
    assert c["roofline"]["model_bytes"] == ip["model"]["size_bytes"]
    assert c["roofline"]["achieved_gbs"] == pytest.approx(ip["model"]["size_bytes"] * ip["decode_tps"]["median"] / 1e9)
    assert (runs[0] / "run.json").is_file()


def test_calibrate_beside_llama_bench_prints_both_and_the_ratio(tiny_models, tmp_path, fake_llama_bench):
    run = tmp_path / "run"
    run.mkdir()
    result = bench("calibrate", str(tiny_models["tiny"]), *FAST, "--llama-bench", str(fake_llama_bench),
                   "--run", str(run), "--sampler", "gpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (c,) = _calibrations(run)
    decode = c["inprocess"]["decode_tps"]["median"]
    assert c["inprocess"]["settings"]["sampler"] == "gpu"
    assert c["llama_bench"]["tg"]["median"] == 100.0
    assert c["ratios"]["decode_vs_tg"] == pytest.approx(decode / 100.0)
    assert c["ratios"]["decode_vs_tg_at_depth"] == pytest.approx(decode / 90.0)
    assert f"{decode / 100.0:.3f}x of tg8" in result.stdout
    assert "-fa 1" in result.stdout and "-d 0,32" in result.stdout
    assert "ms prefill implied by pp32" in result.stdout
    # A second calibration in the same run is added, not overwritten.
    again = bench("calibrate", str(tiny_models["tiny"]), *FAST, "--run", str(run), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(_calibrations(run)) == 2


def test_calibrate_extras_parallel_cpu_sampler_and_telemetry(tiny_models, tmp_path):
    out = tmp_path / "c.json"
    result = bench("calibrate", str(tiny_models["tiny"]), *FAST, "--sampler", "gpu", "--parallel", "2",
                   "--cpu-sampler-reps", "2", "--telemetry-overhead", "2", "--json", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    c = json.loads(out.read_text())
    par = c["inprocess"]["parallel"]
    assert par["n_parallel"] == 2 and par["aggregate_decode_tps"]["median"] > 0
    assert par["ttft_ms"]["n"] == 2 * par["reps"] and par["sampler"] == "gpu"
    assert par["speedup_vs_single_stream"] == pytest.approx(
        par["aggregate_decode_tps"]["median"] / c["inprocess"]["decode_tps"]["median"])
    assert c["inprocess"]["decode_tps_cpu_sampler"]["n"] == 2
    tel = c["inprocess"]["telemetry_overhead"]
    assert tel["hz"] == 20.0 and tel["off_tps"]["n"] == tel["on_tps"]["n"] == 2
    assert tel["diff_share"] == pytest.approx((tel["on_tps"]["median"] - tel["off_tps"]["median"]) / tel["off_tps"]["median"])


def test_calibrate_on_a_twin_is_marked(tmp_path):
    from test_twin import TINY

    from bench import twin

    made = twin.make_twins("tiny-llama", "llama", TINY["llama"], ["Q8_0"], cache_dir=tmp_path, nthread=1)[0]
    run = tmp_path / "run"
    run.mkdir()
    result = bench("calibrate", str(made.path), *FAST, "--run", str(run), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (c,) = _calibrations(run)
    assert c["twin"] is True and c["model_id"] == "tiny-llama"
    assert "twin of tiny-llama" in result.stdout


@pytest.mark.parametrize("args,message", [
    (["no/such/file.gguf"], "no such file"),
    (["{tiny}", "--llama-bench", "/no/such/llama-bench"], "llama-bench not found"),
    (["{tiny}", "--run", "/no/such/run"], "not a directory"),
])
def test_calibrate_bad_input_is_one_line(tiny_models, tmp_path, args, message):
    args = [a.format(tiny=tiny_models["tiny"]) for a in args]
    result = bench("calibrate", *args, *FAST, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_failing_llama_bench_is_one_line(tiny_models, tmp_path, fake_llama_bench):
    result = bench("calibrate", str(tiny_models["tiny"]), *FAST, "--llama-bench", str(fake_llama_bench),
                   cwd=tmp_path, env={"FAKE_FAIL": "1"})
    assert result.returncode == 2
    assert "llama-bench exited with 1" in result.stderr and "failed to load model" in result.stderr


@pytest.mark.skipif(not (os.environ.get("LLAMA_BENCH") or shutil.which("llama-bench")),
                    reason="no real llama-bench (set LLAMA_BENCH)")
def test_against_a_real_llama_bench(tiny_models, tmp_path):
    exe = os.environ.get("LLAMA_BENCH") or shutil.which("llama-bench")
    run = tmp_path / "run"
    run.mkdir()
    result = bench("calibrate", str(tiny_models["tiny"]), *FAST, "--llama-bench", exe, "--run", str(run), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (c,) = _calibrations(run)
    assert c["llama_bench"]["tg"]["median"] > 0 and c["llama_bench"]["pp"]["median"] > 0
    assert c["ratios"]["decode_vs_tg"] > 0


def test_gpu_fidelity_script_in_tiny_mode(tmp_path, fake_llama_bench):
    """The GPU host's one-shot script, end to end on tiny shapes on the CPU."""
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_fidelity.py"), "--out", str(out), "--tiny",
                             "--quick", "--llama-bench", str(fake_llama_bench), "--twin-dir", str(tmp_path / "twins"),
                             "--parallel", "2"], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    doc = json.loads((out / "fidelity.json").read_text())
    (row,) = doc["rows"]
    assert row["model"] == "tiny-llama:q4_K_M" and row["twin"] is True and row["lb_tg"] == 100.0
    assert row["ratio_tg"] == pytest.approx(row["decode"] / 100.0)
    assert doc["extras"]["parallel"]["n_parallel"] == 2 and doc["extras"]["telemetry"]["hz"] == 20.0
    assert all(s["status"] == "ok" for s in doc["steps"])
    md = (out / "fidelity.md").read_text()
    assert "| tiny-llama:q4_K_M | Q4_K_M |" in md and "throughput mode" in md and "telemetry overhead" in md
    assert md in result.stdout  # the same table is printed
    assert not list(out.rglob("*.gguf"))  # twins stay out of the results folder


def test_calibrate_a_manifest_id_on_its_twin(tmp_path):
    from test_twin_profile import _manifest

    manifest = _manifest(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    result = bench("--manifest", str(manifest), "calibrate", "tiny-llama:q8_0", "--twin", *FAST, "--run", str(run),
                   cwd=tmp_path, env={"BENCH_TWIN_CACHE": str(tmp_path / "twins")})
    assert result.returncode == 0, result.stderr
    (c,) = _calibrations(run)
    assert c["twin"] is True and c["model_id"] == "tiny-llama:q8_0"
    assert c["model_path"].startswith(str(tmp_path / "twins"))
    assert "Q8_0" in c["inprocess"]["model"]["desc"]
