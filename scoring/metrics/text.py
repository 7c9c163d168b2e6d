"""Text-level checks: words, sentences, length band, repetition, refusal, language.

Words, sentences and paragraphs follow `scoring.tasks`' rules (the references are checked with
those), and tests hold the two equal. They are re-implemented here in linear time: a model's
output can be a megabyte without a single space, where a backtracking word pattern (a
non-space run around a letter) takes quadratic time.
"""

from __future__ import annotations

import re

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
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]*_]*(?=\s)")
_ABBREVIATIONS = frozenset("e.g i.e eg ie vs cf approx dr mr mrs ms prof st mt jr sr fig nos vol ca".split())
_SOFT_ABBREVIATIONS = frozenset("etc inc ltd co corp no a.m p.m".split())


def words(text: str) -> list[str]:
    return [token for token in (text or "").split() if _WORD_CHAR.search(token)]


def _has_word(text: str) -> bool:
    return _WORD_CHAR.search(text) is not None


def count_words(text: str) -> int:
    return len(words(text))


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


def count_paragraphs(text: str) -> int:
    """Blocks of text separated by blank lines that hold at least one word."""
    return sum(_has_word(p) for p in _PARAGRAPH_BREAK.split(text or ""))


def split_sentences(text: str) -> list[str]:
    """The sentences `scoring.tasks.count_sentences` counts, as strings (same rules, tested equal).

    A blank line or a line break ends a sentence; decimals ("1.7") and abbreviations ("e.g.")
    do not.
    """
    sentences: list[str] = []
    for paragraph in _PARAGRAPH_BREAK.split(text or ""):
        for line in paragraph.splitlines():
            start = 0
            for match in _SENTENCE_END.finditer(line):
                if not _is_boundary(line, match):
                    continue
                piece = line[start : match.end()].strip()
                if _has_word(piece):
                    sentences.append(piece)
                start = match.end()
            tail = line[start:].strip()
            if _has_word(tail):
                sentences.append(tail)
    return sentences


def _is_boundary(line: str, match: re.Match) -> bool:
    following = line[match.end() :].lstrip()
    next_char = following[:1]
    if next_char.islower():
        return False
    if line[match.start()] != ".":
        return True
    token = line[: match.start()].split()[-1:] or [""]
    word = token[0].lstrip("(\"'“‘*_").lower()
    if word in _ABBREVIATIONS:
        return False
    if word in _SOFT_ABBREVIATIONS:
        return next_char.isupper() or not next_char
    if len(word) == 1 and word.isalpha() and token[0][-1:].isupper():
        return False
    return True


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
