"""Text-level checks: words, sentences, length band, repetition, refusal, language.

Words, sentences and paragraphs are `scoring.tasks`' own (the references are checked with the same
rules); they run in linear time, since a model's output can be a megabyte without a single space.
"""

from __future__ import annotations

import re

from scoring.tasks import count_paragraphs, count_sentences, count_words, split_sentences

__all__ = [
    "split_sentences",
    "words",
    "length_ok",
    "repetition_rate",
    "is_refusal",
    "is_english",
    "count_words",
    "count_sentences",
    "count_paragraphs",
]

_WORD_CHAR = re.compile(r"[^\W_]")  # a word is a whitespace-separated token with a letter or digit


def words(text: str) -> list[str]:
    return [token for token in (text or "").split() if _WORD_CHAR.search(token)]


def length_ok(n_words: int, min_words: int, max_words: int) -> bool:
    """Length compliance as the study defined it: the word count lies inside the level's band."""
    return min_words <= n_words <= max_words


def repetition_rate(text: str, n: int = 4) -> float:
    """Share of word n-grams (default 4) that repeat an n-gram seen earlier in the same text.

    Words are lowercased with surrounding punctuation stripped. "a b c d a b c d" has five
    4-grams of which one ("a b c d", the 5th) repeats: 0.2. A text with fewer than n words has
    no n-grams and scores 0.0 (nothing repeats).
    """
    tokens = [w.strip(".,;:!?\"'()[]{}*_“”‘’").lower() for w in words(text)]
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for gram in grams:
        if gram in seen:
            repeats += 1
        else:
            seen.add(gram)
    return repeats / len(grams)


# Phrases assistants use when they decline; matched case-insensitively anywhere in the output.
_REFUSAL = re.compile(
    r"\b(?:"
    r"I(?:'m| am) (?:sorry|afraid|unable|not able)"
    r"|I (?:cannot|can't|can not|won't|will not|must decline|do not feel comfortable|don't feel comfortable)"
    r"|as an AI(?: language model)?"
    r"|I apologi[sz]e,? but"
    r"|(?:cannot|can't|unable to) (?:help|assist|comply|provide|fulfil|fulfill) (?:with )?(?:that|this|your)"
    r"|against my (?:guidelines|policy|programming)"
    r")",
    re.IGNORECASE,
)


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.search(text or ""))


# The commonest English function words: real English prose of 20+ words almost always has
# several; other languages written in Latin script (Spanish, German, French) rarely do.
_EN_STOPWORDS = frozenset(
    "the a an and or of to in on at for with by from is are was were be been it its this that "
    "these those as has have had not but which who their they he she we you i".split()
)
_ASCII_WORD = re.compile(r"[A-Za-z]+(?:['’-][A-Za-z]+)*")
MIN_WORDS_FOR_LANGUAGE = 5
MIN_ASCII_SHARE = 0.8
MIN_STOPWORD_SHARE = 0.08
MIN_WORDS_FOR_STOPWORD_TEST = 20


def is_english(text: str) -> bool | None:
    """A cheap English check, no language-ID model: None for text with too few words to judge.

    English when at least 80 % of the words (tokens with a letter) are plain ASCII-letter words
    (digits, units and symbols don't count against it) and, for texts of 20+ such words, at
    least 8 % are common English function words. A switch to Chinese or Russian fails the first
    test; Spanish or German prose fails the second. Short telegraphic text ("Aurora Kettle —
    1.7 L, 2200 W, stainless steel") has no function words, so it is judged on the first alone.
    """
    tokens = [w for w in words(text) if any(ch.isalpha() for ch in w)]
    if len(tokens) < MIN_WORDS_FOR_LANGUAGE:
        return None
    cores = [w.strip(".,;:!?\"'()[]{}*_“”‘’«»—–-") for w in tokens]
    ascii_share = sum(bool(_ASCII_WORD.fullmatch(c)) for c in cores) / len(cores)
    stop_share = sum(c.lower() in _EN_STOPWORDS for c in cores) / len(cores)
    if ascii_share < MIN_ASCII_SHARE:
        return False
    return len(cores) < MIN_WORDS_FOR_STOPWORD_TEST or stop_share >= MIN_STOPWORD_SHARE
