"""Quality and JSON-reliability metrics, one family per module, and the registry that documents them.

Every per-output figure `scoring.score.score_output` produces is listed in METRICS with its unit,
its direction (is higher better?) and what it means; the report reads the registry for headers and
arrows. A figure that could not be computed is None, never 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from scoring.metrics.errors import LabelMappingError, ModelLoadError, ScoringError, ScoringInputError

__all__ = [
    "MetricInfo", "METRICS", "JSON_METRICS", "ModelLoadError", "LabelMappingError", "ScoringError", "ScoringInputError",
]


@dataclass(frozen=True)
class MetricInfo:
    name: str
    unit: str  # per output: "fraction" (0-1), "bool", "count", "words"
    aggregate_unit: str  # after `aggregate`: bools become "%" (share of outputs)
    direction: str  # "higher" | "lower" is better; "none" for descriptive figures
    description: str
    json_only: bool = False  # None for text variants


def _m(name, unit, direction, description, json_only=False):
    agg_unit = "%" if unit == "bool" else unit
    return MetricInfo(name, unit, agg_unit, direction, description, json_only)


METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        _m("rouge1", "fraction", "higher", "ROUGE-1 F-measure against the level's reference (Porter stemmer, rouge-score)"),
        _m("rouge2", "fraction", "higher", "ROUGE-2 F-measure against the reference"),
        _m("rougeL", "fraction", "higher", "ROUGE-L (sentence-level LCS) F-measure against the reference"),
        _m("factual_nli", "fraction", "higher",
           "mean NLI entailment probability of each output sentence given the fact sheet (SummaC zero-shot style)"),
        _m("contradiction_share", "fraction", "lower",
           "share of output sentences whose most likely NLI label given the fact sheet is contradiction"),
        _m("fact_coverage", "fraction", "higher", "share of the fact sheet's values stated in the output"),
        _m("unsupported_numbers", "count", "lower", "numbers in the output that appear nowhere in the fact sheet"),
        _m("unsupported_number_share", "fraction", "lower",
           "unsupported numbers / all numbers in the output (None when the output has no numbers)"),
        _m("semantic_sim", "fraction", "higher",
           "cosine similarity of all-MiniLM-L6-v2 embeddings of output and reference (stands in for BERTScore)"),
        _m("n_words", "words", "none", "words in the scored text (the JSON's prose for JSON variants)"),
        _m("length_ok", "bool", "higher", "word count within the level's band"),
        _m("repetition", "fraction", "lower", "share of word 4-grams that repeat an earlier 4-gram of the same output"),
        _m("refusal", "bool", "lower", "output matches a common refusal phrase"),
        _m("language_ok", "bool", "higher", "output reads as English (ASCII-letter words and English stopwords)"),
        _m("json_parse_strict", "bool", "higher",
           "the whole output (whitespace stripped) is one JSON object under strict json.loads", True),
        _m("json_parse_lenient", "bool", "higher",
           "a JSON object can be found in the output (inside fences or prose)", True),
        _m("schema_ok", "bool", "higher", "the leniently parsed object validates against the level's JSON Schema (2020-12)", True),
        _m("field_completeness", "fraction", "higher",
           "share of the schema's required fields present and non-empty (0 when no object parses)", True),
        _m("extraneous", "bool", "lower",
           "non-whitespace text (fences included) outside the JSON object; None when no object parses", True),
        _m("key_accuracy", "fraction", "higher",
           "|required ∩ present| / |required ∪ (present − optional)| top-level keys (0 when no object parses)", True),
    )
}

JSON_METRICS = tuple(name for name, info in METRICS.items() if info.json_only)
