from rouge_score import rouge_scorer

from scoring.metrics.rouge import ROUGE_TYPES, make_rouge_scorer, rouge_f

REFERENCE = "The Aurora Kettle holds 1.7 litres and heats water with a 2200-watt element."
CASES = [
    "The Aurora Kettle holds 1.7 litres and heats water with a 2200-watt element.",
    "Aurora kettles hold 1.7 litres; heating uses 2200 watts.",
    "A lighthouse on Marrow Island has 142 steps.",
    "",
]


def test_rouge_matches_rouge_score_with_stemmer():
    reference_scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scorer = make_rouge_scorer()
    for output in CASES:
        ours = rouge_f(output, REFERENCE, scorer)
        theirs = reference_scorer.score(REFERENCE, output)
        assert set(ours) == set(ROUGE_TYPES)
        for name in ROUGE_TYPES:
            assert ours[name] == theirs[name].fmeasure


def test_rouge_hand_computed_values():
    # "the cat sat on the mat" vs "a cat sat on a mat": unigrams 4/6 both ways -> F 2/3;
    # bigrams: "cat sat", "sat on" shared, 2/5 each -> 0.4; LCS "cat sat on mat" = 4 -> 2/3.
    scores = rouge_f("a cat sat on a mat", "the cat sat on the mat")
    assert abs(scores["rouge1"] - 4 / 6) < 1e-12
    assert abs(scores["rouge2"] - 0.4) < 1e-12
    assert abs(scores["rougeL"] - 4 / 6) < 1e-12


def test_stemming_and_direction():
    # use_stemmer: "holds"/"hold", "litres"/"litre" match; identical text scores 1, disjoint 0.
    assert rouge_f("kettle holds litres", "kettle hold litre")["rouge1"] == 1.0
    assert rouge_f(REFERENCE, REFERENCE) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert rouge_f("zebra quantum", REFERENCE)["rouge1"] == 0.0
    assert rouge_f("", REFERENCE)["rougeL"] == 0.0
