import json

import pytest

from scoring.metrics import JSON_METRICS, METRICS
from scoring.metrics.nli import NliScorer
from scoring.metrics.similarity import Embedder
from scoring.score import MAX_SCORED_WORDS, ScoringInputError, aggregate, score_many, score_output
from scoring.tasks import VARIANTS, load_suite, variant_parts

SUITE = load_suite()
ITEM = SUITE.items["prod-aurora-kettle"]
REQUIRED_KEYS = {
    "rouge1", "rouge2", "rougeL", "factual_nli", "contradiction_share", "fact_coverage", "unsupported_numbers",
    "unsupported_number_share", "semantic_sim", "n_words", "length_ok", "repetition", "refusal", "language_ok",
    "json_parse_strict", "json_parse_lenient", "schema_ok", "field_completeness", "extraneous", "key_accuracy",
}


def reference_output(item, variant):
    level, fmt = variant_parts(variant)
    ref = item.references[level]
    if fmt == "text":
        return ref
    if level == "brief":
        return json.dumps({"name": item.name, "description": ref})
    if level == "mid":
        return json.dumps({"name": item.name, "category": item.category, "description": ref,
                           "highlights": ["a", "b", "c"]})
    return json.dumps({"name": item.name, "category": item.category, "summary": "s",
                       "paragraphs": ref.split("\n\n"), "highlights": ["h"], "key_facts": {"k": 1}})


def test_registry_documents_every_key():
    assert REQUIRED_KEYS <= set(METRICS)
    for info in METRICS.values():
        assert info.direction in ("higher", "lower", "none")
        assert info.unit in ("fraction", "bool", "count", "words")
        assert info.description
    assert set(JSON_METRICS) == {"json_parse_strict", "json_parse_lenient", "schema_ok", "field_completeness",
                                 "extraneous", "key_accuracy"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_reference_scores_perfectly_on_itself(variant):
    metrics = score_output({"item_id": ITEM.id, "variant": variant, "output": reference_output(ITEM, variant)}, SUITE)
    assert REQUIRED_KEYS <= set(metrics)
    assert metrics["rouge1"] == metrics["rouge2"] == metrics["rougeL"] == 1.0
    assert metrics["length_ok"] is True and metrics["refusal"] is False and metrics["language_ok"] is True
    assert metrics["unsupported_numbers"] == 0
    assert metrics["factual_nli"] is None and metrics["semantic_sim"] is None  # no models given
    if variant.endswith("_json"):
        assert metrics["text_source"] == "json_prose"
        assert metrics["json_parse_strict"] and metrics["schema_ok"] and metrics["key_accuracy"] == 1.0
    else:
        assert all(metrics[k] is None for k in JSON_METRICS)


def test_json_text_content_is_scored_not_the_braces():
    wrapped = score_output({"item_id": ITEM.id, "variant": "mid_json",
                            "output": "```json\n" + reference_output(ITEM, "mid_json") + "\n```"}, SUITE)
    assert wrapped["rougeL"] == 1.0 and wrapped["extraneous"] is True and wrapped["json_parse_strict"] is False
    broken = reference_output(ITEM, "mid_json")[:-40]
    raw = score_output({"item_id": ITEM.id, "variant": "mid_json", "output": broken}, SUITE)
    assert raw["text_source"] == "raw" and raw["json_parse_lenient"] is False
    assert 0.5 < raw["rougeL"] < 1.0  # judged on the raw words, keys and all
    no_prose = score_output({"item_id": ITEM.id, "variant": "brief_json",
                             "output": json.dumps({"title": ITEM.references["brief"]})}, SUITE)
    assert no_prose["text_source"] == "json_strings" and no_prose["rouge1"] == 1.0
    assert no_prose["schema_ok"] is False and no_prose["key_accuracy"] == 0.0


def test_length_band_uses_the_level():
    short = score_output({"item_id": ITEM.id, "variant": "mid_text", "output": "A kettle. It boils. It is steel."}, SUITE)
    assert short["n_words"] == 7 and short["length_ok"] is False
    assert score_output({"item_id": ITEM.id, "variant": "brief_text", "output": "A steel kettle."}, SUITE)["length_ok"]


@pytest.mark.parametrize(
    "output",
    ["", "\x00\x01\ufffd\ud7ff garbage \u202e", "word " * 250_000, "[" * 60_000, '{"a":' * 30_000],
    ids=["empty", "binary", "1MB", "deep-array", "deep-object"],
)
def test_pathological_outputs_score_without_crashing(output, tiny_nli_models):
    nli = NliScorer(tiny_nli_models["entail_first"])
    for variant in ("strong_text", "strong_json"):
        metrics = score_output({"item_id": ITEM.id, "variant": variant, "output": output}, SUITE, nli=nli)
        assert REQUIRED_KEYS <= set(metrics)
        assert 0.0 <= metrics["rougeL"] <= 1.0
        if len(output) > 100_000 and output.startswith("word"):
            assert metrics["truncated_at_words"] == MAX_SCORED_WORDS
            assert metrics["n_words"] == 250_000 and metrics["repetition"] > 0.99
        if not output.strip():
            assert metrics["factual_nli"] is None  # no sentences: not computed, not 0
            assert metrics["n_words"] == 0 and metrics["length_ok"] is False


def test_bad_rows_are_input_errors():
    with pytest.raises(ScoringInputError, match="missing field output"):
        score_output({"item_id": ITEM.id, "variant": "brief_text"}, SUITE)
    with pytest.raises(ScoringInputError, match="unknown item"):
        score_output({"item_id": "nope", "variant": "brief_text", "output": "x"}, SUITE)
    with pytest.raises(ScoringInputError, match="unknown variant"):
        score_output({"item_id": ITEM.id, "variant": "brief_xml", "output": "x"}, SUITE)
    with pytest.raises(ScoringInputError, match="row 1: field 'output' is int"):
        score_many([{"item_id": ITEM.id, "variant": "brief_text", "output": "x"},
                    {"item_id": ITEM.id, "variant": "brief_text", "output": 3}], SUITE)


def test_score_many_batches_models_and_matches_one_at_a_time(tiny_nli_models):
    nli = NliScorer(tiny_nli_models["entail_first"], batch_size=4)
    embedder = Embedder()
    rows = [{"item_id": item_id, "variant": v, "output": reference_output(SUITE.items[item_id], v)}
            for item_id in list(SUITE.items)[:3] for v in VARIANTS]
    calls = []
    original = nli.score_pairs
    nli.score_pairs = lambda pairs, progress=None: calls.append(len(pairs)) or original(pairs, progress)
    many = score_many(rows, SUITE, nli=nli, embedder=embedder)
    assert len(calls) == 1  # one batched pass over every sentence of every row
    single = score_output(rows[4], SUITE, nli=nli, embedder=embedder)
    assert many[4]["factual_nli"] == pytest.approx(single["factual_nli"], abs=1e-5)
    for metrics in many:
        assert 0.0 <= metrics["factual_nli"] <= 1.0
        assert 0.0 <= metrics["contradiction_share"] <= 1.0
        assert metrics["semantic_sim"] == pytest.approx(1.0, abs=1e-4)  # output == reference


def test_semantic_similarity_ranks_related_text_higher():
    embedder = Embedder()
    ref = ITEM.references["mid"]
    close, far = embedder.cosine(
        ["An electric kettle by Lumen Home with temperature presets and a keep-warm mode.",
         "The lighthouse on Marrow Island has 142 steps and a museum."],
        [ref, ref],
    )
    assert close > far
    assert -1.0 <= far <= 1.0


def test_aggregate_means_shares_and_spread():
    rows = [
        {"variant": "brief_json", "rougeL": 0.2, "length_ok": True, "json_parse_strict": True, "factual_nli": None},
        {"variant": "brief_json", "rougeL": 0.4, "length_ok": False, "json_parse_strict": False, "factual_nli": None},
        {"variant": "brief_json", "rougeL": 0.6, "length_ok": True, "json_parse_strict": True, "factual_nli": None},
        {"variant": "mid_text", "metrics": {"rougeL": 0.5, "length_ok": True}},
    ]
    table = aggregate(rows)
    assert [r["variant"] for r in table] == ["brief_json", "mid_text"]
    brief = table[0]
    assert brief["n"] == 3
    assert brief["rougeL"] == pytest.approx(0.4) and brief["rougeL_sd"] == pytest.approx(0.2)
    assert brief["length_ok"] == pytest.approx(200 / 3) and brief["length_ok_n"] == 3
    assert brief["json_parse_strict"] == pytest.approx(200 / 3)
    assert brief["factual_nli"] is None and brief["factual_nli_n"] == 0  # never computed: None, not 0
    mid = table[1]
    assert mid["rougeL"] == 0.5 and mid["rougeL_sd"] is None and mid["json_parse_strict"] is None
    configs = [{**r, "config_id": f"c{i % 2}"} for i, r in enumerate(rows[:3])]
    by_config = aggregate(configs, by=("config_id", "variant"))
    assert [(r["config_id"], r["n"], r["rougeL"]) for r in by_config] == [
        ("c0", 2, pytest.approx(0.4)), ("c1", 1, pytest.approx(0.4))]
