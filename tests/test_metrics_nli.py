import pytest

from scoring.metrics.errors import LabelMappingError, ModelLoadError
from scoring.metrics.nli import NliProbs, NliScorer, label_indices, nli_figures
from scoring.tasks import load_suite

PREMISE = load_suite().source_text("prod-aurora-kettle")
SENTENCES = [
    "The Aurora Kettle holds 1.7 litres.",
    "It has a 2200-watt element and a brushed stainless steel body.",
    "It costs 89 USD.",
    "Lumen Home gives it a two-year warranty, and it was launched in March 2019 with four presets.",
]


def test_labels_are_read_by_name_not_position():
    assert label_indices({0: "contradiction", 1: "entailment", 2: "neutral"}) == (1, 0)
    assert label_indices({"0": "ENTAILMENT", "1": "NEUTRAL", "2": "CONTRADICTION"}) == (0, 2)
    assert label_indices({0: "entailment", 1: "not_entailment"}) == (0, None)
    with pytest.raises(LabelMappingError, match="unnamed"):
        label_indices({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
    with pytest.raises(LabelMappingError):
        label_indices({0: "positive", 1: "negative"})
    with pytest.raises(LabelMappingError):
        label_indices({})


def test_permuted_labels_give_the_same_probabilities(tiny_nli_models):
    first = NliScorer(tiny_nli_models["entail_first"], batch_size=2)
    last = NliScorer(tiny_nli_models["entail_last"], batch_size=2)
    assert (first.entail_index, first.contradict_index) == (0, 2)
    assert (last.entail_index, last.contradict_index) == (2, 0)
    a = first.score(PREMISE, SENTENCES)
    b = last.score(PREMISE, SENTENCES)
    for x, y in zip(a, b):
        assert x.entail == pytest.approx(y.entail, abs=1e-6)
        assert x.contradict == pytest.approx(y.contradict, abs=1e-6)
    # The test can fail: the random head gives the three classes clearly different probabilities,
    # so reading entailment at a fixed index would give a different number for one of the models.
    import torch

    with torch.inference_mode():
        batch = last.tokenizer([PREMISE], [SENTENCES[0]], return_tensors="pt")
        raw = torch.softmax(last.model(**batch).logits, dim=-1)[0]
    assert abs(float(raw[0]) - a[0].entail) > 1e-3


def test_batching_and_order_do_not_change_results(tiny_nli_models):
    one_by_one = NliScorer(tiny_nli_models["entail_first"], batch_size=1)
    batched = NliScorer(tiny_nli_models["entail_first"], batch_size=32)
    pairs = [(PREMISE, s) for s in SENTENCES] + [("Short premise.", "Short hypothesis.")] + [(PREMISE, SENTENCES[0])]
    seen = []
    a = one_by_one.score_pairs(pairs, progress=lambda done, total: seen.append((done, total)))
    b = batched.score_pairs(pairs)
    assert len(a) == len(b) == len(pairs)
    for x, y in zip(a, b):
        assert x.entail == pytest.approx(y.entail, abs=1e-5)
    assert a[0] == a[-1]  # the duplicate pair
    assert seen[0] == (0, 5) and seen[-1] == (5, 5)  # duplicates are scored once
    for probs in a:
        assert 0.0 <= probs.entail <= 1.0 and 0.0 <= probs.contradict <= 1.0
        assert probs.entail + probs.contradict <= 1.0 + 1e-6
    assert one_by_one.score(PREMISE, []) == []


def test_long_inputs_are_truncated(tiny_nli_models):
    scorer = NliScorer(tiny_nli_models["entail_first"], max_length=64)
    (probs,) = scorer.score(PREMISE, ["word " * 5000])
    assert 0.0 <= probs.entail <= 1.0


def test_two_class_model_has_no_contradiction_share(tiny_nli_models):
    scorer = NliScorer(tiny_nli_models["two_class"])
    probs = scorer.score(PREMISE, SENTENCES[:2])
    assert all(p.contradict is None for p in probs)
    factual, contradicted = nli_figures(probs)
    assert 0.0 <= factual <= 1.0 and contradicted is None


def test_unnamed_labels_are_a_clear_error(tiny_nli_models):
    with pytest.raises(LabelMappingError, match="LABEL_0"):
        NliScorer(tiny_nli_models["unnamed"])


def test_missing_model_is_a_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="--nli-model"):
        NliScorer("cross-encoder/no-such-model-for-bench-tests", allow_download=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        NliScorer(tmp_path / "empty")


def test_nli_figures():
    probs = [NliProbs(0.9, 0.05), NliProbs(0.2, 0.7), NliProbs(0.3, 0.3)]  # neutral 0.05, 0.1, 0.4
    factual, contradicted = nli_figures(probs)
    assert factual == pytest.approx((0.9 + 0.2 + 0.3) / 3)
    assert contradicted == pytest.approx(1 / 3)
    assert nli_figures([]) == (None, None)
