"""Deterministic fact checks against the item's fact sheet: coverage and unsupported numbers.

Both read numbers written in digits with `scoring.tasks.extract_numbers` ("1,200" is 1200, "1.7"
is 1.7; "1.2k" is read as 1.2 and "2.2 kW" is not 2200 W: no unit arithmetic). Coverage also
accepts the number words zero to twenty ("a two-year warranty" states warranty_years = 2),
because prose writes small counts in words.
"""

from __future__ import annotations

import math
import re
from typing import Any

from nltk.stem.porter import PorterStemmer  # ships with rouge-score

from scoring.tasks import extract_numbers

__all__ = ["fact_coverage", "fact_stated", "unsupported_numbers", "output_numbers"]

_NUMBER_WORDS = {
    w: float(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_ISO_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_TOKEN = re.compile(r"[^\W_]+(?:[.,]\d+)*")
# Function words carry no fact: "70, 80, 90 and 100 °C" is stated by its numbers and unit.
_STOPWORDS = frozenset("a an the and or of to in on at for with by from per is are its it as".split())
# "1." / "2)" / "3 -" at a line start is a list marker, not a claim.
_LIST_MARKER = re.compile(r"^[ \t]*\d{1,2}[.)](?=\s)", re.MULTILINE)
STATED_TOKEN_SHARE = 0.5


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def _has_number(value: float, numbers: list[float]) -> bool:
    return any(_close(value, n) for n in numbers)


def output_numbers(text: str) -> list[float]:
    """Numbers written in digits in `text`, list markers ("1." at a line start) left out."""
    return extract_numbers(_LIST_MARKER.sub(" ", text or ""))


def _tokens(text: str, stemmer: PorterStemmer) -> set[str]:
    return {stemmer.stem(t) for t in _TOKEN.findall(text.lower())}


def _value_tokens(value: str) -> list[str]:
    date = _ISO_DATE.match(value.strip())
    if date:
        # Prose rarely gives the full date ("launched in 2019"); the year is what must be right.
        return [date.group(1)]
    return [t for t in _TOKEN.findall(value.lower()) if t not in _STOPWORDS]


_YES_NO = {"yes", "no", "true", "false"}


def fact_stated(value: Any, text: str, *, key: str | None = None, _cache: dict | None = None) -> bool | None:
    """Is this fact value stated in `text`? None for values that can't be checked (empty ones).

    Numbers: the same number appears in digits, or for integers 0-20 also as a word.
    Strings: at least half of the value's content tokens appear (case-insensitive, Porter-stemmed;
    numeric tokens compared as numbers; function words ignored). An ISO date is stated by its
    year. A yes/no or boolean value is stated by
    its key ("gluten_free: yes" by "gluten-free"), since prose names the feature, not "yes".
    """
    cache = _cache if _cache is not None else {}
    stemmer = cache.setdefault("stemmer", PorterStemmer())
    if "numbers" not in cache:
        lowered = (text or "").lower()
        cache["numbers"] = output_numbers(text) + [
            n for w, n in _NUMBER_WORDS.items() if re.search(rf"\b{w}\b", lowered)
        ]
        cache["tokens"] = _tokens(text or "", stemmer)
    numbers, tokens = cache["numbers"], cache["tokens"]

    if value is None:
        return None
    if isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in _YES_NO):
        if not key:
            return None
        value = key.replace("_", " ")
    if isinstance(value, (int, float)):
        return _has_number(float(value), numbers)
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value)
    wanted = _value_tokens(str(value))
    if not wanted:
        return None
    found = 0
    for token in wanted:
        as_numbers = extract_numbers(token)
        if as_numbers and token.replace(",", "").replace(".", "").isdigit():
            found += _has_number(as_numbers[0], numbers)
        else:
            found += stemmer.stem(token) in tokens
    return found / len(wanted) >= STATED_TOKEN_SHARE


def fact_coverage(facts: dict[str, Any], text: str) -> float | None:
    """Share of the checkable fact values stated in `text` (see `fact_stated`); None if none are checkable."""
    cache: dict = {}
    verdicts = [fact_stated(v, text, key=k, _cache=cache) for k, v in facts.items()]
    checked = [v for v in verdicts if v is not None]
    return sum(checked) / len(checked) if checked else None


def unsupported_numbers(text: str, source_text: str) -> tuple[int, float | None]:
    """(count, share) of numbers in `text` that equal no number in `source_text`.

    Numbers are read in digits (list markers excluded); a date in the sheet supplies its year,
    month and day as numbers. The share is None when the text has no numbers.
    """
    found = output_numbers(text)
    if not found:
        return 0, None
    source = extract_numbers(source_text)
    unsupported = sum(not _has_number(n, source) for n in found)
    return unsupported, unsupported / len(found)
