"""Throughput mode: N requests as N sequences of one batch, on the tiny model (one thread)."""

from __future__ import annotations

import pytest

N = 3
TEXTS = ["Describe a kettle.", "What is a teapot for, and who uses one?", "x"]


@pytest.fixture(scope="module")
def setup(tiny_models):
    from bench.engine import generate as gen
    from bench.engine.parallel import ParallelDecoder

    eng = gen.Engine(gen.LlamaLog(lambda line: None))
    eng.load_model(str(tiny_models["tiny"]), 0)
    eng.create_context(256 * N, 1, "auto", n_seq_max=N)
    prompts = [eng.tokenize(f"<|im_start|>user\n{t}<|im_end|>\n<|im_start|>assistant\n", False, -1) for t in TEXTS]
    dec = ParallelDecoder(eng, N)
    yield eng, dec, prompts
    dec.close()
    eng.close()


def _singles(eng, prompts, n, sampler):
    return [eng.generate(p, n, sampler, ignore_eos=True).token_ids for p in prompts]


def test_each_sequence_gets_what_it_would_get_alone(setup):
    from bench.engine import generate as gen

    eng, dec, prompts = setup
    cpu = gen.CpuSampler(eng.vocab, 0.0, 7)
    alone = _singles(eng, prompts, 24, cpu)
    together = dec.generate(prompts, 24, cpu, ignore_eos=True)
    assert [g.token_ids for g in together.generations] == alone
    assert together.sampler == "cpu"
    assert [g.extra["slot"] for g in together.generations] == [0, 1, 2]


def test_backend_sampling_per_sequence(setup):
    from bench.engine import generate as gen

    eng, dec, prompts = setup
    alone = _singles(eng, prompts, 20, gen.CpuSampler(eng.vocab, 0.0, 7))
    sampler = gen.GpuSampler(eng.vocab, 0.0, 7)
    assert eng.attach_gpu_sampler(sampler, range(N))
    r = dec.generate(prompts, 20, sampler, ignore_eos=True)
    assert r.sampler == "gpu" and all(g.extra["sampler"] == "gpu" for g in r.generations)
    assert [g.token_ids for g in r.generations] == alone


def test_per_request_lengths_and_seeded_sampling(setup):
    from bench.engine import generate as gen

    eng, dec, prompts = setup
    hot = gen.CpuSampler(eng.vocab, 1.0, 11)
    r = dec.generate(prompts, [30, 5, 17], hot, ignore_eos=True)
    assert [len(g.token_ids) for g in r.generations] == [30, 5, 17]
    assert all(g.finish_reason == "length" for g in r.generations)
    again = dec.generate(prompts, [30, 5, 17], hot, ignore_eos=True)
    assert [g.token_ids for g in again.generations] == [g.token_ids for g in r.generations]
    # A short stream leaves the batch; the others keep going and stay what they were.
    full = dec.generate(prompts, 30, hot, ignore_eos=True)
    assert full.generations[0].token_ids == r.generations[0].token_ids


def test_timing_figures_hang_together(setup):
    from bench.engine import generate as gen
    from bench.engine.stats import request_timing

    eng, dec, prompts = setup
    r = dec.generate(prompts, 16, gen.CpuSampler(eng.vocab, 0.0, 1), ignore_eos=True)
    assert r.total_tokens == 3 * 16
    assert r.aggregate_tps == pytest.approx(r.total_tokens / r.wall_s)
    assert r.aggregate_decode_tps and r.aggregate_decode_tps > 0
    for g in r.generations:
        times = g.token_times_ns
        assert g.t_start_ns == r.t_start_ns < times[0]
        assert all(b > a for a, b in zip(times, times[1:]))
        assert times[-1] <= r.t_done_ns
        t = request_timing(g.t_start_ns, times, g.n_prompt_tokens, g.t_done_ns)
        assert t.ttft_ms > 0 and t.latency_ms >= t.ttft_ms
    s = r.summary()
    assert s["n_parallel"] == N and s["total_tokens"] == 48


def test_end_tokens_end_a_stream_unless_ignored(setup):
    from bench.engine import generate as gen

    eng, dec, prompts = setup
    r = dec.generate(prompts, 120, gen.CpuSampler(eng.vocab, 0.0, 1))
    import llama_cpp

    for g in r.generations:
        assert not any(llama_cpp.llama_vocab_is_eog(eng.vocab, t) for t in g.token_ids)
        assert g.finish_reason == "stop" or len(g.token_ids) == 120


def test_fewer_requests_than_sequences_and_too_many(setup):
    from bench.engine import generate as gen
    from bench.engine.generate import GenerationError

    eng, dec, prompts = setup
    cpu = gen.CpuSampler(eng.vocab, 0.0, 1)
    r = dec.generate(prompts[:1], 10, cpu, ignore_eos=True)
    assert len(r.generations) == 1 and len(r.generations[0].token_ids) == 10
    with pytest.raises(GenerationError, match="requests for a decoder of"):
        dec.generate(prompts + prompts, 10, cpu)
    with pytest.raises(GenerationError, match="exceeds"):
        dec.generate(prompts, 1000, cpu)


def test_a_long_prefill_is_split_across_batches(tiny_models):
    """Prompts longer together than n_batch: each stream's first token is sampled after its own chunk."""
    from bench.engine import generate as gen
    from bench.engine.parallel import ParallelDecoder

    eng = gen.Engine(gen.LlamaLog(lambda line: None))
    try:
        eng.load_model(str(tiny_models["tiny"]), 0)
        eng.create_context(512 * 2, 1, "auto", n_batch=64, n_seq_max=2)
        prompts = [eng.tokenize("kettle " * 20, False, -1), eng.tokenize("teapot " * 30, False, -1)]
        assert sum(map(len, prompts)) > eng.n_batch
        cpu = gen.CpuSampler(eng.vocab, 0.0, 1)
        alone = _singles(eng, prompts, 12, cpu)
        with ParallelDecoder(eng, 2) as dec:
            r = dec.generate(prompts, 12, cpu, ignore_eos=True)
        assert [g.token_ids for g in r.generations] == alone
    finally:
        eng.close()


# --------------------------------------------------------------------------- the worker in throughput mode


def _worker_spec(run_dir, model, requests, **over) -> dict:
    spec = {
        "run_dir": str(run_dir), "config_id": "tiny", "model_path": str(model), "model_bytes": None,
        "sha256": None, "twin": True, "n_gpu_layers": 0, "flash_attn": "auto", "n_threads": 1, "n_ctx": None,
        "temperature": 0.0, "seed": 1, "max_tokens_cap": 12, "reps": 1, "constrained": False,
        "requests": requests, "sample_hz": 0, "warmup": True, "vram_check": False,
        "sampler": "gpu", "ignore_eos": True, "parallel": 3, "peak_gbs": 100.0,
    }
    spec.update(over)
    return spec


def test_worker_runs_requests_in_parallel_groups_with_gpu_side_sampling(tiny_models, tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from bench import records
    from bench.rundir import RunDir
    from scoring.tasks import load_suite

    repo = Path(__file__).resolve().parents[1]
    requests = []
    for r in load_suite().requests("quick")[:5]:
        d = {k: getattr(r, k) for k in ("request_id", "item_id", "variant", "level", "format", "max_tokens", "schema")}
        d["messages"] = [dict(m) for m in r.messages]
        requests.append(d)
    run = RunDir(tmp_path)
    run.write_meta({"test": True})
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(_worker_spec(tmp_path, tiny_models["tiny"], requests)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-m", "bench.engine.worker", str(spec_path)], capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, (tmp_path / records.LOG_FILE).read_text()[-2000:]
    recs = sorted(run.requests(), key=lambda r: r.request_id)
    assert len(recs) == 5
    for r in recs:
        assert r.twin is True and r.n_gen_tokens == 12 and r.finish_reason == "length"  # EOS ignored
        assert r.extra["sampler"] == "gpu" and r.extra["parallel"] == 3 and r.extra["ignore_eos"] is True
        assert r.extra["group"] in (0, 1) and r.extra["aggregate_tps"] > 0
        assert r.extra["weight_gbs"] > 0
        assert r.extra["weight_bw_share"] == pytest.approx(r.extra["weight_gbs"] / 100.0)
    groups = {r.extra["group"] for r in recs}
    assert groups == {0, 1}  # 5 requests in groups of 3: 3 + 2
