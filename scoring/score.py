"""Score generated outputs against the task suite: one output, many (batched), and aggregates.

A row is a mapping with at least `item_id`, `variant` and `output`. What text is scored:

- text variants: the output as is.
- JSON variants: the prose inside the parsed object (`scoring.tasks.json_text`: `description`,
  or the `paragraphs` joined by blank lines); if the object lacks it, all its string values
  joined; if no object parses, the raw output. So a JSON answer's ROUGE, NLI, length and facts
  are judged on what a reader would see, and a broken JSON answer is still judged on its words
  (its JSON figures record the breakage). `text_source` says which was used.

Very long outputs (runaway generations) are judged on their first MAX_SCORED_WORDS words for
ROUGE, NLI, facts and similarity (`truncated_at_words` is then set); NLI reads at most
MAX_NLI_SENTENCES sentences per output. Counts, length, repetition, refusal and language always
read the whole text.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from scoring.metrics import METRICS
from scoring.metrics.errors import ScoringInputError
from scoring.metrics.facts import fact_coverage, unsupported_numbers
from scoring.metrics.jsonout import json_metrics
from scoring.metrics.nli import NliScorer, nli_figures
from scoring.metrics.rouge import make_rouge_scorer, rouge_f
from scoring.metrics.similarity import Embedder
from scoring.metrics.text import (
    count_paragraphs,
    count_sentences,
    is_english,
    is_refusal,
    length_ok,
    repetition_rate,
    split_sentences,
    words,
)
from scoring.tasks import Suite, json_text, variant_parts

__all__ = ["ScoringInputError", "check_row", "score_output", "score_many", "aggregate", "MAX_SCORED_WORDS", "MAX_NLI_SENTENCES"]

MAX_SCORED_WORDS = 2000  # 5x the strong level's 400-word ceiling
MAX_NLI_SENTENCES = 64  # the strong level has at most ~25
_TOKEN_SPAN = re.compile(r"\S+")
_WORD_CHAR = re.compile(r"[^\W_]")

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class _Prepared:
    row: Mapping[str, Any]
    level: str
    fmt: str
    text: str  # the text judged (see module doc), possibly truncated for the model-based figures
    reference: str
    premise: str
    metrics: dict[str, Any]


def _empty_metrics() -> dict[str, Any]:
    return {name: None for name in METRICS}


def _prefix_words(text: str, limit: int) -> tuple[str, bool]:
    """The text up to its `limit`-th word (words as scoring.metrics.text.words), and whether it was cut."""
    seen = 0
    for match in _TOKEN_SPAN.finditer(text):
        if _WORD_CHAR.search(match.group()):
            if seen == limit:
                return text[: match.start()], True
            seen += 1
    return text, False


def _string_values(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _string_values(v)]
    if isinstance(value, list):
        return [s for v in value for s in _string_values(v)]
    return []


def check_row(row: Mapping[str, Any], suite: Suite) -> None:
    """Raise ScoringInputError unless the row has a string output, a known item and a known variant."""
    if not isinstance(row, Mapping):
        raise ScoringInputError(f"a row must be a JSON object, not {type(row).__name__}")
    missing = [name for name in ("item_id", "variant", "output") if name not in row]
    if missing:
        raise ScoringInputError(f"missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    if not isinstance(row["output"], str):
        raise ScoringInputError(f"field 'output' is {type(row['output']).__name__}, not a string")
    try:
        variant_parts(str(row["variant"]))
        suite.item(str(row["item_id"]))
    except ValueError as exc:
        raise ScoringInputError(str(exc)) from None


def _prepare(row: Mapping[str, Any], suite: Suite, rouge) -> _Prepared:
    check_row(row, suite)
    output = row["output"]
    level, fmt = variant_parts(str(row["variant"]))
    item = suite.item(str(row["item_id"]))

    metrics = _empty_metrics()
    text, source = output, "raw"
    if fmt == "json":
        figures, found = json_metrics(output, suite.schemas[level])
        metrics.update(figures)
        if found is not None:
            prose = json_text(level, found.value)
            if prose is not None:
                text, source = prose, "json_prose"
            else:
                text, source = "\n\n".join(s for s in _string_values(found.value) if s.strip()), "json_strings"
    metrics["text_source"] = source

    spec = suite.levels[level]
    n_words = len(words(text))
    metrics["n_words"] = n_words
    metrics["n_sentences"] = count_sentences(text)
    metrics["n_paragraphs"] = count_paragraphs(text)
    metrics["length_ok"] = length_ok(n_words, spec.min_words, spec.max_words)
    metrics["repetition"] = repetition_rate(text)
    metrics["refusal"] = is_refusal(output)
    metrics["language_ok"] = is_english(text)

    judged, truncated = _prefix_words(text, MAX_SCORED_WORDS)
    metrics["truncated_at_words"] = MAX_SCORED_WORDS if truncated else None
    reference = item.references[level]
    premise = suite.source_text(item.id)
    metrics.update(rouge_f(judged, reference, rouge))
    metrics["fact_coverage"] = fact_coverage(item.facts, judged)
    count, share = unsupported_numbers(judged, premise)
    metrics["unsupported_numbers"] = count
    metrics["unsupported_number_share"] = share
    return _Prepared(row, level, fmt, judged, reference, premise, metrics)


def score_output(
    row: Mapping[str, Any], suite: Suite, *, nli: NliScorer | None = None, embedder: Embedder | None = None
) -> dict[str, Any]:
    """Every metric for one output (see scoring.metrics.METRICS); None where not computed."""
    return score_many([row], suite, nli=nli, embedder=embedder)[0]


def score_many(
    rows: Sequence[Mapping[str, Any]],
    suite: Suite,
    *,
    nli: NliScorer | None = None,
    embedder: Embedder | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Metrics for each row, in order. NLI and embedding run once over all rows, in batches.

    Without `nli`, factual_nli and contradiction_share stay None; without `embedder`,
    semantic_sim does. Raises ScoringInputError (with the row's index) for a row it can't score.
    """
    rouge = make_rouge_scorer()
    prepared: list[_Prepared] = []
    for index, row in enumerate(rows):
        try:
            prepared.append(_prepare(row, suite, rouge))
        except ScoringInputError as exc:
            raise ScoringInputError(f"row {index}: {exc}") from None
        if progress:
            progress("rules", index + 1, len(rows))

    if nli is not None:
        _add_nli(prepared, nli, progress)
    if embedder is not None:
        _add_similarity(prepared, embedder, progress)
    return [p.metrics for p in prepared]


def _add_nli(prepared: list[_Prepared], nli: NliScorer, progress: Progress | None) -> None:
    spans: list[tuple[int, int]] = []
    pairs: list[tuple[str, str]] = []
    for p in prepared:
        sentences = split_sentences(p.text)[:MAX_NLI_SENTENCES]
        spans.append((len(pairs), len(pairs) + len(sentences)))
        pairs.extend((p.premise, s) for s in sentences)
    callback = (lambda done, total: progress("nli", done, total)) if progress else None
    probs = nli.score_pairs(pairs, progress=callback)
    for p, (start, end) in zip(prepared, spans):
        factual, contradicted = nli_figures(probs[start:end])
        p.metrics["factual_nli"] = factual
        p.metrics["contradiction_share"] = contradicted


def _add_similarity(prepared: list[_Prepared], embedder: Embedder, progress: Progress | None) -> None:
    judged = [p for p in prepared if p.text.strip()]  # an empty text has no meaning to compare
    if progress:
        progress("embed", 0, len(prepared))
    sims = embedder.cosine([p.text for p in judged], [p.reference for p in judged])
    for p, sim in zip(judged, sims):
        p.metrics["semantic_sim"] = sim
    if progress:
        progress("embed", len(prepared), len(prepared))


# --------------------------------------------------------------------------- aggregation


def _flat(row: Mapping[str, Any]) -> Mapping[str, Any]:
    metrics = row.get("metrics")
    return {**row, **metrics} if isinstance(metrics, Mapping) else row


def aggregate(scored: Iterable[Mapping[str, Any]], by: Sequence[str] = ("variant",)) -> list[dict[str, Any]]:
    """One row per group: `n` outputs, and per metric its mean (bools: share in %), `<m>_n` (outputs
    where it was computed) and, for non-bool metrics, `<m>_sd` (sample sd; None below n=2).

    Rows may be flat (group fields and metrics side by side) or ScoreRecord-shaped (metrics under
    "metrics"). Groups keep first-appearance order.
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in scored:
        flat = _flat(row)
        groups.setdefault(tuple(flat.get(k) for k in by), []).append(flat)
    table = []
    for key, members in groups.items():
        out: dict[str, Any] = dict(zip(by, key))
        out["n"] = len(members)
        for name, info in METRICS.items():
            values = [m.get(name) for m in members if m.get(name) is not None]
            out[f"{name}_n"] = len(values)
            if info.unit == "bool":
                out[name] = 100.0 * sum(bool(v) for v in values) / len(values) if values else None
                continue
            numbers = [float(v) for v in values]
            out[name] = sum(numbers) / len(numbers) if numbers else None
            out[f"{name}_sd"] = _sd(numbers)
        table.append(out)
    return table


def _sd(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
