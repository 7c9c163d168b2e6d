"""`bench sweep` end to end on the tiny random model (CPU, one thread): depths, failures, resume, report."""

from __future__ import annotations

import json
from collections import Counter, namedtuple
from pathlib import Path

import pytest

from bench.rundir import read_jsonl
from bench.sweep.records import SWEEP_FILE
from tiny_gguf import write_tiny_gguf

Result = namedtuple("Result", "code out err")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    # head_dim 32: the quantized KV types' 32-value blocks fit, so q4_0 fails only for the reason under test
    return write_tiny_gguf(tmp_path_factory.mktemp("sweep") / "tiny32.gguf", n_embd=128, n_head=4, n_head_kv=2,
                           n_ff=256, seed=3)


def bench(capsys, *args) -> Result:
    from bench.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    return Result(exited.value.code, captured.out, captured.err)


def sweep(capsys, model, out, *extra) -> Result:
    return bench(capsys, "sweep", str(model), "--cpu", "--threads", "1", "--sample-hz", "0", "-p", "16", "-n", "6",
                 "--out", str(out), *extra)


def rows(out: Path) -> list[dict]:
    return read_jsonl(out / SWEEP_FILE).rows


def test_decode_is_measured_after_the_cache_holds_the_depth(model, tmp_path, capsys):
    out = tmp_path / "run"
    result = sweep(capsys, model, out, "-d", "0,40,100", "--reps", "2", "--seed", "5")
    assert result.code == 0, result.err + result.out
    records = rows(out)
    assert Counter((r["depth"], r["rep"]) for r in records) == Counter(
        {(d, rep): 1 for d in (0, 40, 100) for rep in (0, 1)}
    )
    for r in records:
        assert r["status"] == "ok"
        assert r["kv_tokens_before_prefill"] == r["depth"]
        assert r["kv_tokens_before_decode"] == r["depth"]  # the prefill tokens were dropped again
        assert r["n_gen"] == 6 and r["n_prompt"] == 16
        assert r["prefill_tps"] > 0 and r["decode_tps"] > 0
        assert r["settings"]["n_threads"] == 1 and r["settings"]["n_gpu_layers"] == 0
        assert r["device"] == "cpu" and r["n_ctx"] >= 100 + 16
    meta = json.loads((out / "run.json").read_text())
    assert meta["kind"] == "sweep" and meta["options"]["seed"] == 5 and meta["status"] == "completed"
    configs = read_jsonl(out / "configs.jsonl").rows
    assert len(configs) == 2 and all(c["status"] == "ok" for c in configs)  # one load per repetition


def test_a_setting_that_fails_to_load_is_recorded_and_the_sweep_goes_on(model, tmp_path, capsys):
    out = tmp_path / "run"
    result = sweep(capsys, model, out, "-d", "0,32", "--reps", "1", "--flash-attn", "off", "--kv-type", "f16,q4_0")
    assert result.code == 1  # a load failed
    records = rows(out)
    failed = [r for r in records if r["status"] == "failed"]
    ok = [r for r in records if r["status"] == "ok"]
    assert {r["settings"]["kv_type"] for r in failed} == {"q4_0"} and len(failed) == 2
    assert all("flash_attn" in r["error"] and r["stage"] == "context" for r in failed)
    assert {r["settings"]["kv_type"] for r in ok} == {"f16"} and len(ok) == 2
    assert "failed" in result.out


def test_resume_measures_only_what_is_missing(model, tmp_path, capsys):
    out = tmp_path / "run"
    assert sweep(capsys, model, out, "-d", "0,24", "--reps", "2", "--flash-attn", "on,off").code == 0
    first = rows(out)
    kept = first[:3]
    (out / SWEEP_FILE).write_text("".join(json.dumps(r) + "\n" for r in kept))
    meta = json.loads((out / "run.json").read_text())
    meta["status"] = "interrupted"
    (out / "run.json").write_text(json.dumps(meta))
    result = bench(capsys, "sweep", "--resume", str(out))
    assert result.code == 0, result.err + result.out
    after = rows(out)
    keys = Counter((r["config_id"], r["depth"], r["rep"]) for r in after)
    assert len(keys) == len(first) and set(keys.values()) == {1}
    assert after[:3] == kept  # nothing recorded earlier was touched


def test_resume_refuses_new_options(model, tmp_path, capsys):
    out = tmp_path / "run"
    assert sweep(capsys, model, out, "-d", "0", "--reps", "1").code == 0
    result = bench(capsys, "sweep", "--resume", str(out), "--reps", "3")
    assert result.code == 2 and "--reps" in result.err


@pytest.mark.parametrize("args,needle", [
    (["-d", "8-4"], "--depth"),
    (["--kv-type", "q3_0"], "--kv-type"),
    (["--flash-attn", "maybe"], "--flash-attn"),
    (["--cpu", "--n-gpu-layers", "10"], "--n-gpu-layers"),
])
def test_bad_values_are_one_clear_line(model, tmp_path, capsys, args, needle):
    result = bench(capsys, "sweep", str(model), "--out", str(tmp_path / "x"), *args)
    assert result.code == 2
    assert needle in result.err and "Traceback" not in result.err


def test_report_section_tables_and_figure(model, tmp_path, capsys):
    from reports.aggregate import load_run
    from reports.document import Figure, Table
    from reports.report import ReportContext
    from reports.sweep import sweep_section, sweep_summary_frame

    out = tmp_path / "run"
    result = sweep(capsys, model, out, "-d", "0,32", "--reps", "2", "--flash-attn", "on,off", "--kv-type", "f16,q4_0")
    assert result.code == 1
    section = sweep_section(ReportContext(load_run(out), with_plots=True))
    tables = {b.key: b for b in section.blocks if isinstance(b, Table)}
    assert set(tables) == {"sweep", "sweep_flash_attn", "sweep_kv_type"}
    main = tables["sweep"]
    assert len(main.rows) == 4 * 2  # configurations x depths
    failed_rows = [r for r in main.rows if r[4].value]
    assert len(failed_rows) == 2 and all("flash_attn" in r[4].detail for r in failed_rows)  # q4_0 without FA
    assert any(isinstance(b, Figure) and b.png.startswith(b"\x89PNG") for b in section.blocks)
    summary = sweep_summary_frame(out)
    ok = summary.dropna(subset=["decode_median"])
    assert (ok.n == 2).all()
    fa = tables["sweep_flash_attn"]
    assert [r[0].text for r in fa.rows] == ["on", "off"]  # the order given on the command line
