"""The timed generation loop and its pieces, in-process on the tiny random GGUF (one thread)."""

from __future__ import annotations

import json

import pytest

from bench.engine.chat import FALLBACK_CHATML, GGUF_TEMPLATE, ChatPrompter, render_chatml
from bench.engine.orchestrator import plan_device
from bench.engine.stats import percentile, request_timing, spread
from bench.errors import EngineError

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Describe a kettle. é 日本"}]


# --------------------------------------------------------------------------- stats


def test_percentile_interpolates_like_numpy():
    np = pytest.importorskip("numpy")
    values = [5.0, 1.0, 9.0, 3.0, 7.5, 2.25]
    for q in (0, 10, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([], 50) is None
    assert percentile([4.0], 90) == 4.0


def test_request_timing_follows_the_published_formulas():
    ms = 1_000_000
    start = 10 * ms
    tokens = [start + 100 * ms, start + 110 * ms, start + 130 * ms, start + 160 * ms]
    t = request_timing(start, tokens, n_prompt_tokens=50, t_done_ns=start + 161 * ms)
    assert t.ttft_ms == pytest.approx(100.0)
    assert t.latency_ms == pytest.approx(160.0)
    assert t.prefill_tps == pytest.approx(50 / 0.100)
    assert t.decode_tps == pytest.approx(3 / 0.060)  # (n_gen - 1) / (t_last - t_first)
    assert t.itl_p50_ms == pytest.approx(20.0)
    assert t.token_times_ms == pytest.approx([100.0, 110.0, 130.0, 160.0])


def test_request_timing_without_tokens_uses_the_stop_time_and_no_decode_speed():
    t = request_timing(0, [], n_prompt_tokens=10, t_done_ns=5_000_000)
    assert t.ttft_ms == t.latency_ms == pytest.approx(5.0)
    assert t.decode_tps is None and t.itl_p50_ms is None
    one = request_timing(0, [2_000_000], n_prompt_tokens=10, t_done_ns=3_000_000)
    assert one.decode_tps is None and one.ttft_ms == pytest.approx(2.0)


def test_spread_skips_missing_values():
    s = spread([None, 1.0, 2.0, 3.0, None])
    assert (s.n, s.median) == (3, 2.0)


# --------------------------------------------------------------------------- device policy


def test_auto_uses_the_gpu_when_the_build_can_offload():
    plan = plan_device("auto", None, build_gpu=True, gpu_visible=True)
    assert (plan.device, plan.n_gpu_layers) == ("gpu", -1)


def test_auto_refuses_a_cpu_only_build_when_a_gpu_is_present():
    with pytest.raises(EngineError, match="GGML_CUDA=on"):
        plan_device("auto", None, build_gpu=False, gpu_visible=True)


def test_auto_without_any_gpu_runs_on_the_cpu_and_says_so():
    plan = plan_device("auto", None, build_gpu=False, gpu_visible=False)
    assert (plan.device, plan.n_gpu_layers) == ("cpu", 0)
    assert "CPU" in plan.note


@pytest.mark.parametrize("device,layers", [("gpu", None), ("auto", -1), ("auto", 12), ("gpu", 5)])
def test_gpu_layers_on_a_cpu_only_build_are_refused_with_the_fix(device, layers):
    with pytest.raises(EngineError) as info:
        plan_device(device, layers, build_gpu=False, gpu_visible=False)
    assert 'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python' in str(info.value)


def test_cpu_on_purpose_and_contradictions():
    assert plan_device("cpu", None, build_gpu=True, gpu_visible=True).n_gpu_layers == 0
    assert plan_device("auto", 0, build_gpu=True, gpu_visible=True).device == "cpu"
    assert plan_device("gpu", 20, build_gpu=True, gpu_visible=True).n_gpu_layers == 20
    with pytest.raises(EngineError, match="contradicts"):
        plan_device("cpu", 8, build_gpu=True, gpu_visible=True)
    with pytest.raises(EngineError, match="contradicts"):
        plan_device("gpu", 0, build_gpu=True, gpu_visible=True)


# --------------------------------------------------------------------------- chat template


def test_chatml_fallback_text():
    text = render_chatml(MESSAGES)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("<|im_start|>assistant\n")
    prompter = ChatPrompter(None)
    assert prompter.render(MESSAGES).template == FALLBACK_CHATML


def test_gguf_template_is_rendered_with_a_generation_prompt():
    from tiny_gguf import CHATML_TEMPLATE

    rendered = ChatPrompter(CHATML_TEMPLATE, "<s>", "</s>").render(MESSAGES)
    assert rendered.template == GGUF_TEMPLATE
    assert rendered.text == render_chatml(MESSAGES)


# --------------------------------------------------------------------------- the engine on a real (tiny) model


@pytest.fixture(scope="module")
def engine(tiny_models):
    from bench.engine import generate as gen

    lines: list[str] = []
    eng = gen.Engine(gen.LlamaLog(lines.append))
    facts = eng.load_model(str(tiny_models["tiny"]), 0)
    flash = eng.create_context(1024, 1, "auto")
    yield eng, facts, flash, lines
    eng.close()


def _prompt(eng, facts):
    prompter = ChatPrompter(facts.chat_template, facts.bos_token, facts.eos_token)
    return eng.tokenize(prompter.render(MESSAGES).text, facts.add_bos, facts.bos_id), prompter


def test_load_reports_where_the_layers_are_and_the_template(engine):
    eng, facts, flash, lines = engine
    assert facts.device == "cpu" and facts.n_layers_offloaded == 0
    assert facts.n_layers_total == facts.n_layer + 1 == 3
    assert facts.chat_template and "<|im_start|>" in facts.chat_template
    assert flash in (True, False)  # auto resolved from llama.cpp's own log line
    assert any("llama_context" in line for line in lines)  # llama.cpp's log was routed to us


def test_special_tokens_are_parsed_in_the_prompt(engine):
    eng, facts, _, _ = engine
    tokens, prompter = _prompt(eng, facts)
    assert prompter.label == GGUF_TEMPLATE
    im_start = eng.tokenize("<|im_start|>", False, -1)
    assert len(im_start) == 1 and tokens[0] == im_start[0]


def test_generation_invariants_and_cache_clearing(engine):
    from bench.engine import generate as gen

    eng, facts, _, _ = engine
    tokens, _ = _prompt(eng, facts)
    sampler = gen.CpuSampler(eng.vocab, 0.0, 7)
    first = eng.generate(tokens, 40, sampler)
    times = first.token_times_ns
    assert len(first.token_ids) == len(times) <= 40
    assert all(b > a for a, b in zip(times, times[1:]))
    assert first.t_start_ns < times[0] and times[-1] <= first.t_done_ns
    assert first.finish_reason in ("stop", "length")
    if first.finish_reason == "length":
        assert len(first.token_ids) == 40
    # Without clearing the KV cache the second request would continue the first one's context.
    second = eng.generate(tokens, 40, sampler)
    assert second.token_ids == first.token_ids and second.text == first.text


def test_temperature_sampling_is_seeded(engine):
    from bench.engine import generate as gen

    eng, facts, _, _ = engine
    tokens, _ = _prompt(eng, facts)
    a = eng.generate(tokens, 30, gen.CpuSampler(eng.vocab, 1.0, 123))
    b = eng.generate(tokens, 30, gen.CpuSampler(eng.vocab, 1.0, 123))
    assert a.token_ids == b.token_ids


def test_constrained_decoding_emits_json_of_the_schema(engine):
    from bench.engine import generate as gen

    eng, facts, _, _ = engine
    tokens, _ = _prompt(eng, facts)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    out = eng.generate(tokens, 200, gen.CpuSampler(eng.vocab, 0.0, 7), gen.schema_grammar(schema))
    text = out.text.strip()
    assert text.startswith("{")
    if out.finish_reason == "stop":
        value = json.loads(text)
        assert set(value) == {"n"} and isinstance(value["n"], int)


def test_too_long_a_request_is_refused_not_truncated(engine):
    from bench.engine import generate as gen

    eng, facts, _, _ = engine
    tokens, _ = _prompt(eng, facts)
    with pytest.raises(gen.GenerationError, match="n_ctx"):
        eng.generate(tokens, eng.n_ctx, gen.CpuSampler(eng.vocab, 0.0, 7))


def test_a_file_llama_cpp_rejects_fails_with_its_reason(tiny_models):
    from bench.engine import generate as gen

    lines: list[str] = []
    eng = gen.Engine(gen.LlamaLog(lines.append))
    with pytest.raises(EngineError, match="could not load"):
        eng.load_model(str(tiny_models["corrupt"]), 0)
    assert lines  # llama.cpp said why, into our log
