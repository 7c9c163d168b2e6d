"""ROUGE-1/2/L F-measure, HELM's way: rouge-score with the Porter stemmer.

rouge-score's tokenizer lowercases and keeps only [a-z0-9] runs, so punctuation, markdown and
non-ASCII letters do not count. ROUGE-L here is the sentence-level LCS ("rougeL"), not the
newline-split summary variant ("rougeLsum").
"""

from __future__ import annotations

from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def make_rouge_scorer() -> rouge_scorer.RougeScorer:
    """Build once and pass to `rouge_f`: building the stemmer per call costs more than scoring."""
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge_f(output: str, reference: str, scorer: rouge_scorer.RougeScorer | None = None) -> dict[str, float]:
    """{"rouge1", "rouge2", "rougeL"} F-measures in [0, 1] of `output` against `reference`."""
    scorer = scorer or make_rouge_scorer()
    scores = scorer.score(reference, output or "")  # rouge-score takes (target, prediction)
    return {name: float(scores[name].fmeasure) for name in ROUGE_TYPES}
