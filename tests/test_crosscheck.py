"""`bench crosscheck` against a replayed Ollama (tests/ollama_replay.py): what is sent, what is kept, what is flagged.

The run directories here are written by hand with the records `bench profile` writes (run.json,
configs.jsonl, requests.jsonl with each request's rendered prompt), so these tests need no model.
"""

from __future__ import annotations

import hashlib
import json
from collections import namedtuple
from pathlib import Path

import pytest

from bench import records
from bench.crosscheck.records import (
    FLAG_EVAL_NEAR_ZERO,
    FLAG_MODEL_RELOADED,
    FLAG_PROMPT_CACHED,
    FLAG_PROMPT_TOKENS_DIFFER,
    CrosscheckRecord,
    compute_flags,
    read_crosschecks,
)
from bench.engine.chat import render_chatml
from bench.rundir import RunDir
from ollama_replay import OllamaReplay, Scenario, closed_port_url

Result = namedtuple("Result", "code out err")
N_CTX = 1024
MAX_TOKENS = 24


def bench(capsys, *args) -> Result:
    from bench.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return Result(exited.value.code, captured.out, captured.err)


# --------------------------------------------------------------------------- a hand-written run


def make_run(tmp_path: Path, config_ids=("tiny:a",), constrained: bool = False, ollama_tag: str | None = None,
             with_prompt: bool = True) -> dict:
    """A run directory as `bench profile` leaves it; returns what the tests need to know about it."""
    from scoring.tasks import load_suite

    run_path = tmp_path / "run"
    run_path.mkdir()
    suite = load_suite()
    requests = suite.requests("quick")
    info = {"path": run_path, "configs": {}, "prompts": {}, "outputs": {}, "n_prompt": {}, "schemas": {}}
    configs_meta = []
    for index, config_id in enumerate(config_ids):
        model = tmp_path / f"model-{index}.gguf"
        model.write_bytes(b"GGUF" + bytes([index]) * 4096)
        sha = hashlib.sha256(model.read_bytes()).hexdigest()
        info["configs"][config_id] = {"path": model, "sha256": sha}
        configs_meta.append({
            "config_id": config_id,
            "entry": {"id": config_id, "family": "tiny", "quant": "Q8_0", "ollama_tag": ollama_tag},
            "resolved": {"path": str(model), "size_bytes": model.stat().st_size, "sha256": sha, "verified_by": "lock"},
        })
        RunDir(run_path).append(records.CONFIGS_FILE, records.ConfigRecord(
            config_id=config_id, status="ok", stage="done", n_requests=len(requests), model_path=str(model),
            sha256=sha, device="gpu", n_ctx=N_CTX, n_threads=4, flash_attn=True,
        ))
        for i, request in enumerate(requests):
            modes = ["plain"] + (["constrained"] if constrained and request.format == "json" else [])
            for mode in modes:
                # A distinct prompt per config and mode, so the replay can answer each one its own way.
                prompt = render_chatml(request.messages) + f"[{config_id} {mode}]"
                output = f"Output {i} of {config_id} in {mode} mode, word by word."
                rec = records.RequestRecord(
                    config_id=config_id, rep=0, request_id=request.request_id, item_id=request.item_id,
                    variant=request.variant, level=request.level, format=request.format, mode=mode, twin=False,
                    n_prompt_tokens=200 + i, n_gen_tokens=12, finish_reason="stop", output=output,
                    ttft_ms=40.0 + i, latency_ms=400.0 + 10 * i, prefill_tps=5000.0, decode_tps=50.0 + i,
                    itl_p50_ms=20.0, itl_p90_ms=25.0, itl_p99_ms=30.0, token_times_ms=[], seed=42,
                    temperature=0.0, max_tokens=MAX_TOKENS, t_start_unix=0.0, t_end_unix=1.0,
                    extra={"prompt": prompt, "add_bos": False, "bos_token": "<s>"} if with_prompt else {},
                )
                RunDir(run_path).append(records.REQUESTS_FILE, rec)
                info["prompts"][rec.key] = prompt
                info["outputs"][rec.key] = output
                info["n_prompt"][rec.key] = rec.n_prompt_tokens
                if mode == "constrained":
                    info["schemas"][rec.key] = request.schema
    RunDir(run_path).write_meta({
        "status": "completed",
        "options": {"preset": "quick", "reps": 1, "seed": 42, "temperature": 0.0, "max_tokens": MAX_TOKENS,
                    "n_ctx": None, "constrained": constrained},
        "configs": configs_meta,
        "request_ids": [r.request_id for r in requests],
    })
    return info


def replay_for(info: dict, **kwargs) -> Scenario:
    """A scenario that answers every prompt of the run with the in-process output and token count."""
    scenario = Scenario(**kwargs)
    for key, prompt in info["prompts"].items():
        scenario.outputs[prompt] = info["outputs"][key]
        scenario.prompt_tokens[prompt] = info["n_prompt"][key]
    return scenario


def crosscheck_rows(run_path: Path, label: str = "ollama") -> list[CrosscheckRecord]:
    sets = {s.label: s for s in read_crosschecks(run_path)}
    return sets[label].records if label in sets else []


def meta_of(run_path: Path, label: str = "ollama") -> dict:
    return json.loads((run_path / "crosscheck" / f"{label}.meta.json").read_text())


# --------------------------------------------------------------------------- the happy path


def test_creates_the_model_from_the_runs_file_and_sends_matched_raw_requests(tmp_path, capsys):
    info = make_run(tmp_path)
    scenario = replay_for(info)
    with OllamaReplay(scenario) as server:
        result = bench(capsys, "crosscheck", info["path"], "--ollama", server.url)
    assert result.code == 0, result.out + result.err

    config = info["configs"]["tiny:a"]
    digest = f"sha256:{config['sha256']}"
    # The blob was checked, then uploaded with the run's exact bytes, then a model made from it.
    assert [e["path"] for e in scenario.calls("HEAD", "/api/blobs/")] == [f"/api/blobs/{digest}"]
    assert scenario.calls("POST", "/api/blobs/")[0]["body"]["bytes"] == config["path"].stat().st_size
    create = scenario.calls("POST", "/api/create")[0]["body"]
    assert create["files"] == {config["path"].name: digest}
    assert create["model"] == f"bench-tiny-a:{config['sha256'][:12]}"

    timed = scenario.generate_bodies(timed_only=True)
    assert len(timed) == len(info["prompts"]) + 1  # every request once, plus the warm-up (its first prompt)
    for body in timed[1:]:
        assert body["raw"] is True and body["stream"] is True
        assert body["prompt"] in info["prompts"].values()
        assert "format" not in body  # a plain run: no schema
        opts = body["options"]
        assert opts["num_ctx"] == N_CTX  # always explicit, the in-process run's context
        assert opts["temperature"] == 0.0 and opts["seed"] == 42 and opts["num_predict"] == MAX_TOKENS
        assert opts["repeat_penalty"] == 1.0
    # Between timed requests an untimed flush request keeps the prompt cache from carrying over.
    flushes = [b for b in scenario.generate_bodies() if b["prompt"] not in info["prompts"].values()]
    assert len(flushes) == len(info["prompts"])

    rows = crosscheck_rows(info["path"])
    assert sorted(r.key for r in rows) == sorted(info["prompts"])
    for row in rows:
        assert row.ok and row.output == info["outputs"][row.key]
        assert row.ttft_ms is not None and row.latency_ms >= row.ttft_ms
        assert row.eval_count == len(row.output.split()) and row.n_gen_tokens_source == "server"
        assert row.server_tps == pytest.approx(row.eval_count / (row.eval_duration_ns / 1e9))
        assert row.flags == [] and row.num_ctx == N_CTX and row.prompt_source == "run"
        # chunks paced 2 ms apart (500 tok/s); arrival jitter moves it, a burst would read ~1e5
        assert 20 < row.client_decode_tps < 2000

    meta = meta_of(info["path"])
    assert meta["server"]["version"] == "0.6.8" and meta["server"]["url"] == server.url
    assert meta["options"]["seed"] == 42 and meta["options"]["endpoint"].startswith("/api/generate")
    assert meta["configs"]["tiny:a"]["status"] == "ok" and meta["configs"]["tiny:a"]["same_file"] is True

    report = (info["path"] / "crosscheck" / "report.md").read_text()
    assert "Identical outputs" in report and "100.0% (6/6)" in report
    assert "Decode speed, in-process vs server" in result.out


def test_a_blob_already_on_the_server_is_not_uploaded_again(tmp_path, capsys):
    info = make_run(tmp_path)
    config = info["configs"]["tiny:a"]
    scenario = replay_for(info)
    scenario.blobs[f"sha256:{config['sha256']}"] = config["path"].read_bytes()
    with OllamaReplay(scenario) as server:
        assert bench(capsys, "crosscheck", info["path"], "--ollama", server.url).code == 0
    assert scenario.calls("POST", "/api/blobs/") == []
    assert scenario.calls("POST", "/api/create")


def test_constrained_requests_send_the_schema_as_format(tmp_path, capsys):
    info = make_run(tmp_path, constrained=True)
    scenario = replay_for(info)
    with OllamaReplay(scenario) as server:
        assert bench(capsys, "crosscheck", info["path"], "--ollama", server.url, "--no-warmup").code == 0
    by_prompt = {b["prompt"]: b for b in scenario.generate_bodies(timed_only=True)}
    assert info["schemas"], "the run has constrained requests"
    for key, prompt in info["prompts"].items():
        body = by_prompt[prompt]
        if key.endswith("|constrained"):
            assert body["format"] == info["schemas"][key]
        else:
            assert "format" not in body


def test_a_rerun_sends_only_what_is_missing(tmp_path, capsys):
    info = make_run(tmp_path)
    scenario = replay_for(info)
    with OllamaReplay(scenario) as server:
        assert bench(capsys, "crosscheck", info["path"], "--ollama", server.url, "--limit", "2").code == 0
        first = len(scenario.generate_bodies(timed_only=True))
        result = bench(capsys, "crosscheck", info["path"], "--ollama", server.url)
    assert result.code == 0
    assert "2 request(s) already cross-checked" in result.out
    timed = scenario.generate_bodies(timed_only=True)[first:]
    assert len(timed) == len(info["prompts"]) - 2 + 1  # the rest, plus one warm-up
    assert len({r.key for r in crosscheck_rows(info["path"])}) == len(info["prompts"])


def test_without_a_server_option_it_reprints_the_existing_report(tmp_path, capsys):
    info = make_run(tmp_path)
    result = bench(capsys, "crosscheck", info["path"])
    assert result.code == 2 and "--ollama" in result.err
    with OllamaReplay(replay_for(info)) as server:
        bench(capsys, "crosscheck", info["path"], "--ollama", server.url)
    result = bench(capsys, "crosscheck", info["path"])
    assert result.code == 0 and "Output agreement" in result.out


# --------------------------------------------------------------------------- flags


def test_cached_prompt_zero_eval_duration_and_reload_are_flagged_and_kept_out(tmp_path, capsys):
    info = make_run(tmp_path)
    keys = list(info["prompts"])
    cached, zero, reloaded, omitted = keys[0], keys[1], keys[2], keys[3]
    scenario = replay_for(info)
    scenario.overrides[info["prompts"][cached]] = {"prompt_eval_count": 3}
    scenario.overrides[info["prompts"][zero]] = {"eval_duration": 0}
    scenario.overrides[info["prompts"][reloaded]] = {"load_duration": 2_500_000_000}
    # Go's omitempty: a fully cached prompt and a zero duration are simply absent from the final object.
    scenario.overrides[info["prompts"][omitted]] = {"prompt_eval_count": None, "eval_duration": None}
    with OllamaReplay(scenario) as server:
        result = bench(capsys, "crosscheck", info["path"], "--ollama", server.url, "--no-warmup")
    assert result.code == 0, result.out
    rows = {r.key: r for r in crosscheck_rows(info["path"])}
    assert rows[cached].flags == [FLAG_PROMPT_CACHED]
    assert rows[zero].flags == [FLAG_EVAL_NEAR_ZERO] and rows[zero].server_tps is None
    assert rows[reloaded].flags == [FLAG_MODEL_RELOADED]
    assert set(rows[omitted].flags) == {FLAG_PROMPT_CACHED, FLAG_EVAL_NEAR_ZERO}
    assert rows[omitted].prompt_eval_count == 0 and rows[omitted].server_tps is None
    for key in keys[4:]:
        assert rows[key].flags == []

    from reports.crosscheck import crosscheck_tables

    tables = crosscheck_tables(info["path"]).tables
    flags = tables["flags"].iloc[0]
    assert (flags["prompt_cached"], flags["eval_near_zero"], flags["model_reloaded"]) == (2, 2, 1)
    speed, latency = tables["speed"].iloc[0], tables["latency"].iloc[0]
    assert speed["server_tps_n"] == len(keys) - 2  # no TPS from a near-zero decode time
    assert latency["n_timing_pairs"] == len(keys) - 3  # cached and reloaded requests are out of TTFT/latency
    # Never an absurd TPS: every printed server TPS is a real eval_count / eval_duration.
    assert all(r.server_tps is None or r.server_tps < 1000 for r in rows.values())


def test_chunks_arriving_in_one_burst_give_no_client_tps(tmp_path, capsys):
    info = make_run(tmp_path)
    scenario = replay_for(info, token_interval_s=0.0)
    with OllamaReplay(scenario) as server:
        assert bench(capsys, "crosscheck", info["path"], "--ollama", server.url, "--no-warmup").code == 0
    rows = crosscheck_rows(info["path"])
    assert rows and all(r.client_decode_tps is None for r in rows)
    assert all(r.server_tps is not None for r in rows)  # the server's own figures are still there


def test_compute_flags_rules():
    def record(**kw):
        base = dict(server_kind="ollama", server_label="o", key="k", config_id="c", rep=0, request_id="i/v",
                    item_id="i", variant="v", mode="plain", server_model="m", prompt_source="run",
                    n_prompt_tokens_ours=100, max_tokens=10, seed=1, temperature=0.0, num_ctx=512,
                    prompt_eval_count=100, eval_count=10, eval_duration_ns=200_000_000, load_duration_ns=5_000_000)
        base.update(kw)
        return CrosscheckRecord(**base)

    ok = record()
    assert compute_flags(ok) == [] and ok.server_tps == pytest.approx(50.0)
    assert compute_flags(record(prompt_eval_count=99)) == []  # one token (a cached BOS) is tolerated
    assert compute_flags(record(prompt_eval_count=98)) == [FLAG_PROMPT_CACHED]
    assert compute_flags(record(prompt_eval_count=0)) == [FLAG_PROMPT_CACHED]
    assert compute_flags(record(prompt_eval_count=101)) == [FLAG_PROMPT_TOKENS_DIFFER]
    near_zero = record(eval_duration_ns=999_999)
    assert compute_flags(near_zero) == [FLAG_EVAL_NEAR_ZERO] and near_zero.server_tps is None
    assert compute_flags(record(load_duration_ns=50_000_000)) == [FLAG_MODEL_RELOADED]
    # OpenAI servers: usage gives the prompt's total, timings what was evaluated.
    openai = record(server_kind="openai", load_duration_ns=None, usage_prompt_tokens=101)
    assert compute_flags(openai) == [FLAG_PROMPT_TOKENS_DIFFER]
    no_timings = record(server_kind="openai", prompt_eval_count=None, eval_count=None, eval_duration_ns=None,
                        load_duration_ns=None)
    assert compute_flags(no_timings) == [] and no_timings.server_tps is None


# --------------------------------------------------------------------------- failures


def test_unreachable_server_gives_one_line_per_configuration_and_exit_1(tmp_path, capsys):
    info = make_run(tmp_path, config_ids=("tiny:a", "tiny:b"))
    result = bench(capsys, "crosscheck", info["path"], "--ollama", closed_port_url(), "--timeout", "5")
    assert result.code == 1
    lines = [line for line in result.out.splitlines() if line.startswith("✗")]
    assert len(lines) == 2
    assert all("cannot reach Ollama" in line and "connection refused" in line for line in lines)
    assert "Traceback" not in result.out + result.err
    meta = meta_of(info["path"])
    assert {c["status"] for c in meta["configs"].values()} == {"failed"}


def test_missing_tag_on_pull_fails_that_configuration_and_the_next_goes_on(tmp_path, capsys):
    info = make_run(tmp_path, config_ids=("tiny:a", "tiny:b"), ollama_tag="tiny:known")
    scenario = replay_for(info)
    meta = json.loads((info["path"] / "run.json").read_text())
    meta["configs"][0]["entry"]["ollama_tag"] = "tiny:unknown"  # Ollama's library has no such tag
    RunDir(info["path"]).write_meta(meta)
    scenario.pullable["tiny:known"] = info["configs"]["tiny:b"]["sha256"]
    with OllamaReplay(scenario) as server:
        result = bench(capsys, "crosscheck", info["path"], "--ollama", server.url, "--pull")
    assert result.code == 1
    failed = [line for line in result.out.splitlines() if line.startswith("✗")]
    assert len(failed) == 1 and "tiny:a" in failed[0] and "tiny:unknown" in failed[0]
    assert "file does not exist" in failed[0]
    rows = crosscheck_rows(info["path"])
    assert rows and {r.config_id for r in rows} == {"tiny:b"}
    assert {r.server_model for r in rows} == {"tiny:known"}
    cfg = meta_of(info["path"])["configs"]
    assert cfg["tiny:a"]["status"] == "failed" and cfg["tiny:b"]["status"] == "ok"
    assert cfg["tiny:b"]["same_file"] is True  # /api/show's FROM blob is the run's sha256


def test_pull_of_a_different_file_is_said_in_the_report(tmp_path, capsys):
    info = make_run(tmp_path, ollama_tag="tiny:other")
    scenario = replay_for(info)
    scenario.pullable["tiny:other"] = "ab" * 32
    with OllamaReplay(scenario) as server:
        assert bench(capsys, "crosscheck", info["path"], "--ollama", server.url, "--pull").code == 0
    assert meta_of(info["path"])["configs"]["tiny:a"]["same_file"] is False
    assert "did not use the run's file" in (info["path"] / "crosscheck" / "report.md").read_text()


def test_model_missing_without_a_tag_on_pull(tmp_path, capsys):
    info = make_run(tmp_path)
    with OllamaReplay(replay_for(info)) as server:
        result = bench(capsys, "crosscheck", info["path"], "--ollama", server.url, "--pull")
    assert result.code == 1
    assert "has no ollama_tag in the manifest" in result.out


def test_run_model_file_gone_is_a_clear_line(tmp_path, capsys):
    info = make_run(tmp_path)
    info["configs"]["tiny:a"]["path"].unlink()
    with OllamaReplay(replay_for(info)) as server:
        result = bench(capsys, "crosscheck", info["path"], "--ollama", server.url)
    assert result.code == 1
    assert "is not on this machine" in result.out and "bench fetch tiny:a" in result.out


@pytest.mark.parametrize("how", ["stream", "http"])
def test_create_failure_fails_that_configuration_and_the_next_goes_on(tmp_path, capsys, how):
    info = make_run(tmp_path, config_ids=("tiny:a", "tiny:b"))
    scenario = replay_for(info)
    if how == "stream":
        scenario.create_error = "invalid file magic"
    else:
        scenario.create_http_error = (400, "unsupported architecture")
    with OllamaReplay(scenario) as server:
        result = bench(capsys, "crosscheck", info["path"], "--ollama", server.url)
    assert result.code == 1
    failed = [line for line in result.out.splitlines() if line.startswith("✗")]
    assert len(failed) == 2  # both configurations were tried; each says why
    reason = "invalid file magic" if how == "stream" else "unsupported architecture"
    assert all(reason in line and "creating bench-tiny-" in line for line in failed)
    assert "Traceback" not in result.out + result.err


def test_a_request_timing_out_fails_that_configuration_and_keeps_the_rest(tmp_path, capsys):
    info = make_run(tmp_path, config_ids=("tiny:a", "tiny:b"))
    scenario = replay_for(info)
    a_keys = [k for k in info["prompts"] if k.startswith("tiny:a|")]
    stalled = a_keys[2]
    scenario.stall_s[info["prompts"][stalled]] = 3.0
    with OllamaReplay(scenario) as server:
        result = bench(capsys, "crosscheck", info["path"], "--ollama", server.url, "--timeout", "0.5", "--no-warmup")
    assert result.code == 1
    failed = [line for line in result.out.splitlines() if line.startswith("✗")]
    assert len(failed) == 1 and "tiny:a" in failed[0] and "--timeout 0.5" in failed[0]
    rows = crosscheck_rows(info["path"])
    a_rows = {r.key: r for r in rows if r.config_id == "tiny:a"}
    assert set(a_rows) == set(a_keys[:3])  # two answered, the timed-out one recorded with its error
    assert a_rows[stalled].error and a_rows[stalled].ttft_ms is None
    assert len([r for r in rows if r.config_id == "tiny:b" and r.ok]) == len(a_keys)
    from reports.crosscheck import crosscheck_tables

    flags = crosscheck_tables(info["path"]).tables["flags"].set_index("config_id")
    assert flags.loc["tiny:a", "n_failed"] == 1 and flags.loc["tiny:b", "n_failed"] == 0


def test_unknown_config_and_bad_label_are_one_line_errors(tmp_path, capsys):
    info = make_run(tmp_path)
    result = bench(capsys, "crosscheck", info["path"], "--ollama", "http://127.0.0.1:9", "--config", "nope")
    assert result.code == 2 and result.err.startswith("error: --config nope: not in this run")
    result = bench(capsys, "crosscheck", info["path"], "--ollama", "http://127.0.0.1:9", "--label", "a/b")
    assert result.code == 2 and "--label" in result.err
    result = bench(capsys, "crosscheck", tmp_path / "nothing", "--ollama")
    assert result.code == 2 and result.err.startswith("error:")


# --------------------------------------------------------------------------- prompts and report


def test_server_prompt_drops_a_bos_the_server_would_add_again():
    from bench.crosscheck.plan import server_prompt

    assert server_prompt("<s>[INST] hi", add_bos=True, bos_token="<s>") == "[INST] hi"
    assert server_prompt("[INST] hi", add_bos=True, bos_token="<s>") == "[INST] hi"
    assert server_prompt("<s>[INST] hi", add_bos=False, bos_token="<s>") == "<s>[INST] hi"


def test_older_runs_are_re_rendered_from_the_gguf_template(tmp_path, capsys, tiny_models):
    info = make_run(tmp_path, with_prompt=False)
    model = tiny_models["tiny"]  # a real GGUF with a ChatML template
    meta = json.loads((info["path"] / "run.json").read_text())
    meta["configs"][0]["resolved"] = {"path": str(model), "size_bytes": model.stat().st_size,
                                      "sha256": hashlib.sha256(model.read_bytes()).hexdigest()}
    RunDir(info["path"]).write_meta(meta)
    from bench.crosscheck.plan import plan_run
    from scoring.tasks import load_suite

    plan = plan_run(info["path"])
    first = plan.configs[0].requests[0]
    expected = render_chatml(load_suite().request(first.ours.item_id, first.ours.variant).messages)
    assert first.prompt_source == "re-rendered" and first.prompt == expected
    assert any("re-rendered" in note for note in plan.notes)


def test_paired_ratio_is_deterministic_and_brackets_the_point():
    from reports.crosscheck import paired_ratio

    ours = [10.0, 11.0, 12.0, 13.0, 14.0, 15.0]
    theirs = [20.0, 21.0, 25.0, 26.0, 29.0, 31.0]
    a, b = paired_ratio(ours, theirs), paired_ratio(ours, theirs)
    assert a == b
    assert a.ratio == pytest.approx((25.5) / (12.5))
    assert a.low <= a.ratio <= a.high and a.n_a == 6
    none = paired_ratio([1.0, None], [None, 2.0])
    assert none.ratio is None and none.n_a == 0


def test_report_section_for_bench_report(tmp_path, capsys):
    from reports.crosscheck import crosscheck_section
    from reports.document import Table

    class Ctx:
        class run:  # noqa: N801 - mimics ReportContext.run
            path = None

    info = make_run(tmp_path)
    Ctx.run.path = info["path"]
    assert crosscheck_section(Ctx) is None  # no cross-check yet: no section
    scenario = replay_for(info)
    wrong = next(iter(info["prompts"].values()))
    scenario.outputs[wrong] = "Something else entirely."
    with OllamaReplay(scenario) as server:
        bench(capsys, "crosscheck", info["path"], "--ollama", server.url)
    section = crosscheck_section(Ctx)
    titles = [b.title for b in section.blocks if isinstance(b, Table)]
    assert titles == ["Decode speed, in-process vs server", "TTFT and latency, in-process vs server",
                      "Output agreement and quality deltas", "Flags"]
    agreement = next(b for b in section.blocks if isinstance(b, Table) and b.key == "crosscheck_agreement")
    cells = {c.key: cell for c, cell in zip(agreement.columns, agreement.rows[0])}
    assert cells["exact_match"].text == "83.3%" and cells["exact_match"].detail == "5/6"
    assert cells["delta_rougeL"].text != "—"  # both sides scored with the rule-based metrics


# --------------------------------------------------------------------------- the OpenAI path, offline


def _llama_server_stream(text_chunks, prompt_n, predicted_ms=120.0):
    """An SSE body shaped like llama-server's /v1/completions stream with include_usage."""
    lines = []
    for text in text_chunks:
        chunk = {"choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": None}],
                 "object": "text_completion", "model": "model.gguf"}
        lines.append("data: " + json.dumps(chunk))
    final = {"choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}],
             "object": "text_completion", "model": "model.gguf",
             "usage": {"completion_tokens": len(text_chunks), "prompt_tokens": prompt_n,
                       "total_tokens": prompt_n + len(text_chunks)},
             "timings": {"prompt_n": prompt_n, "prompt_ms": 30.5, "predicted_n": len(text_chunks),
                         "predicted_ms": predicted_ms, "predicted_per_second": len(text_chunks) / predicted_ms * 1000}}
    lines += ["data: " + json.dumps(final), "data: [DONE]"]
    return ("\n\n".join(lines) + "\n\n").encode()


def test_openai_client_reads_usage_and_llama_server_timings(tmp_path):
    import httpx

    from bench.crosscheck.openai_client import OpenAIClient
    from bench.crosscheck.plan import plan_run
    from bench.crosscheck.runner import build_record, server_request

    info = make_run(tmp_path, constrained=True)
    plan = plan_run(info["path"])
    config = plan.configs[0]
    planned = next(p for p in config.requests if p.ours.mode == "constrained")
    sent = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "model-0.gguf", "owned_by": "llamacpp"}]})
        if request.url.path == "/props":
            return httpx.Response(200, json={"build_info": "b6097-9515c613", "model_path": "/models/model-0.gguf",
                                             "default_generation_settings": {"n_ctx": 4096}, "total_slots": 1})
        if request.url.path == "/v1/completions":
            sent.append(json.loads(request.content))
            body = _llama_server_stream(["Hello", " there", "."], planned.ours.n_prompt_tokens + 1)
            return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
        return httpx.Response(404, json={"error": {"message": "not found"}})

    client = OpenAIClient("http://server.test/v1", timeout_s=5)
    client._http = httpx.Client(base_url=client.url, transport=httpx.MockTransport(handler))
    info_server = client.describe()
    assert info_server["version"] == "b6097-9515c613" and info_server["props"]["n_ctx"] == 4096
    model = client.prepare(config)
    assert model.same_file is True and model.details["server_n_ctx"] == 4096
    reply = client.generate(model, server_request(config, planned))
    body = sent[-1]
    assert body["prompt"] == planned.prompt and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True} and body["cache_prompt"] is False
    assert body["temperature"] == 0.0 and body["seed"] == 42 and body["max_tokens"] == MAX_TOKENS
    assert body["json_schema"] == planned.schema  # constrained request, llama-server's field
    rec = build_record("openai", "openai", config, planned, model, reply)
    assert rec.output == "Hello there." and rec.finish_reason == "stop"
    assert rec.usage_completion_tokens == 3 and rec.eval_count == 3 and rec.eval_duration_ns == 120_000_000
    assert rec.server_tps == pytest.approx(25.0)
    assert rec.n_gen_tokens == 3 and rec.n_gen_tokens_source == "server"
    assert rec.flags == [FLAG_PROMPT_TOKENS_DIFFER]  # usage counted one token more than our engine


def test_openai_needs_config_when_the_run_has_several(tmp_path, capsys):
    info = make_run(tmp_path, config_ids=("tiny:a", "tiny:b"))
    result = bench(capsys, "crosscheck", info["path"], "--openai", "http://127.0.0.1:9")
    assert result.code == 2 and "--config" in result.err
