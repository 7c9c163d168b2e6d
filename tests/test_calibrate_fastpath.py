"""The fast decode path: backend ("GPU-side") sampling, fixed-length generation, text made after timing.

llama.cpp runs backend sampler chains on whatever device holds the output layer, the CPU included,
so the very code path a GPU run takes is exercised here on the tiny model with one thread.
"""

from __future__ import annotations

import pytest

MESSAGES = [{"role": "user", "content": "Describe a kettle in two sentences."}]


@pytest.fixture(scope="module")
def engine(tiny_models):
    from bench.engine import generate as gen
    from bench.engine.chat import ChatPrompter

    eng = gen.Engine(gen.LlamaLog(lambda line: None))
    facts = eng.load_model(str(tiny_models["tiny"]), 0)
    eng.create_context(1024, 1, "auto")
    prompter = ChatPrompter(facts.chat_template, facts.bos_token, facts.eos_token)
    prompt = eng.tokenize(prompter.render(MESSAGES).text, facts.add_bos, facts.bos_id)
    yield eng, prompt
    eng.close()


def _ll():
    import llama_cpp

    return llama_cpp


def test_greedy_on_the_backend_gives_the_cpu_sampler_tokens(engine):
    from bench.engine import generate as gen

    eng, prompt = engine
    cpu = eng.generate(prompt, 40, gen.CpuSampler(eng.vocab, 0.0, 7), ignore_eos=True)
    gpu_sampler = gen.GpuSampler(eng.vocab, 0.0, 7)
    assert eng.attach_gpu_sampler(gpu_sampler)
    on_backend = eng.generate(prompt, 40, gpu_sampler, ignore_eos=True)
    # The token really came out of the graph: llama.cpp holds a backend-sampled token.
    assert _ll().llama_get_sampled_token_ith(eng.ctx, -1) == on_backend.token_ids[-1]
    assert on_backend.extra["sampler"] == "gpu" and cpu.extra["sampler"] == "cpu"
    assert on_backend.token_ids == cpu.token_ids
    assert on_backend.text == cpu.text


def test_seeded_temperature_sampling_repeats_and_matches_the_cpu_chain(engine):
    from bench.engine import generate as gen

    eng, prompt = engine
    hot = gen.GpuSampler(eng.vocab, 1.0, 123)
    assert eng.attach_gpu_sampler(hot)
    a = eng.generate(prompt, 30, hot, ignore_eos=True)
    b = eng.generate(prompt, 30, hot, ignore_eos=True)
    assert a.token_ids == b.token_ids  # the chain's RNG is reset per request
    other_seed = eng.generate(prompt, 30, gen.GpuSampler(eng.vocab, 1.0, 124), ignore_eos=True)
    assert other_seed.extra["sampler"] == "gpu"  # the attached chain (seed 123) sampled it
    cpu = eng.generate(prompt, 30, gen.CpuSampler(eng.vocab, 1.0, 123), ignore_eos=True)
    assert cpu.token_ids == a.token_ids  # same top-k/top-p/temperature/dist chain, same draws


def test_grammar_requests_fall_back_to_the_cpu_chain_and_the_backend_comes_back(engine):
    from bench.engine import generate as gen

    eng, prompt = engine
    sampler = gen.GpuSampler(eng.vocab, 0.0, 7)
    assert eng.attach_gpu_sampler(sampler)
    plain = eng.generate(prompt, 20, sampler, ignore_eos=True)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    constrained = eng.generate(prompt, 60, sampler, gen.schema_grammar(schema))
    assert constrained.extra["sampler"] == "cpu"
    assert constrained.text.lstrip().startswith("{")  # the grammar was applied, not bypassed
    again = eng.generate(prompt, 20, sampler, ignore_eos=True)
    assert again.extra["sampler"] == "gpu" and again.token_ids == plain.token_ids


def test_a_cpu_sampler_request_is_sampled_on_the_cpu_even_with_a_backend_chain_attached(engine):
    from bench.engine import generate as gen

    eng, prompt = engine
    assert eng.attach_gpu_sampler(gen.GpuSampler(eng.vocab, 0.0, 7))
    hot_cpu = eng.generate(prompt, 30, gen.CpuSampler(eng.vocab, 1.0, 5), ignore_eos=True)
    hot_cpu_again = eng.generate(prompt, 30, gen.CpuSampler(eng.vocab, 1.0, 5), ignore_eos=True)
    greedy = eng.generate(prompt, 30, gen.CpuSampler(eng.vocab, 0.0, 5), ignore_eos=True)
    assert hot_cpu.extra["sampler"] == "cpu" and hot_cpu.token_ids == hot_cpu_again.token_ids
    assert hot_cpu.token_ids != greedy.token_ids  # not the attached greedy chain's tokens


def test_ignore_eos_generates_exactly_max_tokens(engine):
    from bench.engine import generate as gen

    eng, prompt = engine
    for sampler in (gen.CpuSampler(eng.vocab, 0.0, 3), gen.GpuSampler(eng.vocab, 0.0, 3)):
        if sampler.name == "gpu":
            assert eng.attach_gpu_sampler(sampler)
        g = eng.generate(prompt, 64, sampler, ignore_eos=True)
        assert len(g.token_ids) == len(g.token_times_ns) == 64 and g.finish_reason == "length"
        assert all(b > a for a, b in zip(g.token_times_ns, g.token_times_ns[1:]))


def test_without_ignore_eos_generation_stops_at_an_end_token(engine):
    from bench.engine import generate as gen

    eng, prompt = engine
    llama = _ll()
    eos = llama.llama_vocab_eos(eng.vocab)
    g = eng.generate(prompt, 200, gen.CpuSampler(eng.vocab, 0.0, 3))
    assert eos not in g.token_ids
    assert g.finish_reason == "stop" or len(g.token_ids) == 200


def test_text_is_the_pieces_of_the_tokens(engine):
    from bench.engine import generate as gen

    eng, prompt = engine
    g = eng.generate(prompt, 50, gen.CpuSampler(eng.vocab, 1.0, 9), ignore_eos=True)
    import ctypes

    llama = _ll()
    assert g.text == eng.detokenize(g.token_ids)
    buf = ctypes.create_string_buffer(64)
    pieces = b""
    for t in g.token_ids:  # each token's bytes (special tokens render as nothing), joined, then decoded
        n = llama.llama_token_to_piece(eng.vocab, t, buf, len(buf), 0, False)
        pieces += buf.raw[:n]
    assert g.text == pieces.decode("utf-8", errors="replace")


def test_a_new_context_starts_without_a_backend_chain(tiny_models):
    from bench.engine import generate as gen

    eng = gen.Engine(gen.LlamaLog(lambda line: None))
    try:
        eng.load_model(str(tiny_models["tiny"]), 0)
        eng.create_context(512, 1, "auto")
        sampler = gen.GpuSampler(eng.vocab, 0.0, 1)
        assert eng.attach_gpu_sampler(sampler)
        eng.free_context()
        eng.create_context(512, 1, "auto", n_seq_max=2)
        prompt = eng.tokenize("hello", False, -1)
        g = eng.generate(prompt, 5, sampler, ignore_eos=True)
        assert g.extra["sampler"] == "cpu"  # nothing attached to the new context: CPU chain
    finally:
        eng.close()
