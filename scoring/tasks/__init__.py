"""The description-generation task suite, loaded from data files.

The study scored description generation at three lengths (brief, mid, strong), each as
plain text and as JSON: six variants. Its dataset was never published, so the items,
references, prompts, schemas and presets live as data under ``data/`` and this module
only loads, checks and combines them into chat requests.

The text-measuring helpers (``count_words``, ``count_sentences``, ``count_paragraphs``,
``extract_numbers``) live here too, because the references are checked against the
level bands with exactly the functions the scorer uses for length compliance.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the project supports 3.10 through tomli
    import tomli as tomllib

__all__ = [
    "VARIANTS",
    "LEVELS",
    "FORMATS",
    "DATA_DIR",
    "LevelSpec",
    "Item",
    "TaskRequest",
    "Suite",
    "variant_parts",
    "load_suite",
    "render_facts",
    "json_text",
    "count_words",
    "count_sentences",
    "split_sentences",
    "count_paragraphs",
    "extract_numbers",
]

VARIANTS = ("brief_text", "brief_json", "mid_text", "mid_json", "strong_text", "strong_json")
LEVELS = ("brief", "mid", "strong")
FORMATS = ("text", "json")
DATA_DIR = Path(__file__).resolve().parent / "data"

# "*" in a preset group means "every item" / "every variant", in file order.
_ALL = "*"
# Keys dropped from a schema before it is shown to the model: they address validators,
# not the writer, and cost a small model attention for nothing.
_SCHEMA_META_KEYS = ("$schema", "$id")


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class LevelSpec:
    """One description level's length band and generation budget."""

    name: str
    min_words: int
    max_words: int
    min_sentences: int
    max_sentences: int
    min_paragraphs: int
    max_paragraphs: int
    max_tokens: int
    use: str


@dataclass(frozen=True)
class Item:
    """A source entity: its fact sheet and one reference description per level."""

    id: str
    name: str
    category: str
    domain: str
    facts: dict
    references: dict  # level -> reference text


@dataclass(frozen=True)
class TaskRequest:
    """One generation request: an item rendered for one variant."""

    request_id: str  # f"{item_id}/{variant}"
    item_id: str
    variant: str
    level: str
    format: str  # "text" | "json"
    messages: tuple  # (system dict, user dict)
    max_tokens: int
    schema: dict | None  # the level's JSON schema for json variants, else None


@dataclass(frozen=True)
class _Prompts:
    system: str
    fact_line: str
    templates: dict  # variant -> user template


@dataclass(frozen=True)
class Suite:
    """The loaded suite. Build requests with ``requests(preset)`` or ``request(...)``."""

    items: dict[str, Item]
    levels: dict[str, LevelSpec]
    schemas: dict[str, dict]
    presets: dict[str, list[tuple[str, str]]]  # preset -> [(item_id, variant)]
    # Defaults let a test build a small Suite from the four fields above alone.
    prompts: _Prompts = field(default_factory=lambda: _load_prompts(DATA_DIR / "prompts.toml"))
    preset_descriptions: dict[str, str] = field(default_factory=dict)

    def item(self, item_id: str) -> Item:
        try:
            return self.items[item_id]
        except KeyError:
            raise ValueError(
                f"unknown item {item_id!r}; the suite has {len(self.items)} items, "
                f"e.g. {', '.join(list(self.items)[:3])}"
            ) from None

    def requests(self, preset: str) -> list[TaskRequest]:
        if preset not in self.presets:
            raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(self.presets)}")
        return [self.request(item_id, variant) for item_id, variant in self.presets[preset]]

    def request(self, item_id: str, variant: str) -> TaskRequest:
        level, fmt = variant_parts(variant)
        item = self.item(item_id)
        spec = self.levels[level]
        schema = self.schemas[level] if fmt == "json" else None
        user = _render_user(self.prompts, variant, item, spec, schema)
        return TaskRequest(
            request_id=f"{item_id}/{variant}",
            item_id=item_id,
            variant=variant,
            level=level,
            format=fmt,
            messages=(
                {"role": "system", "content": self.prompts.system},
                {"role": "user", "content": user},
            ),
            max_tokens=spec.max_tokens,
            schema=schema,
        )

    def source_text(self, item_id: str) -> str:
        """The fact sheet as plain sentences: the premise for NLI factual consistency."""
        item = self.item(item_id)
        sentences = [f"Name: {item.name}", f"Category: {item.category}"]
        sentences += [f"{_humanise_key(k).capitalize()}: {_format_value(v)}" for k, v in item.facts.items()]
        return " ".join(s.rstrip(".") + "." for s in sentences)


def variant_parts(variant: str) -> tuple[str, str]:
    """``"mid_json"`` -> ``("mid", "json")``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known variants: {', '.join(VARIANTS)}")
    level, fmt = variant.split("_")
    return level, fmt


def json_text(level: str, obj: Any) -> str | None:
    """The prose of a JSON answer, for the same length/ROUGE scoring as a text answer.

    brief and mid carry it in ``description``; strong in ``paragraphs`` (joined with blank
    lines so paragraph counting works). None when the object doesn't have it.
    """
    if not isinstance(obj, dict):
        return None
    if level == "strong":
        paragraphs = obj.get("paragraphs")
        if isinstance(paragraphs, list) and paragraphs and all(isinstance(p, str) for p in paragraphs):
            return "\n\n".join(p.strip() for p in paragraphs)
        return None
    text = obj.get("description")
    return text if isinstance(text, str) else None


# --------------------------------------------------------------------------- loading


def load_suite(data_dir: str | Path | None = None) -> Suite:
    """Load (and validate) the suite from ``data_dir``, default: the package's data."""
    path = Path(data_dir) if data_dir is not None else DATA_DIR
    return _load_cached(str(path.resolve()))


@functools.lru_cache(maxsize=8)
def _load_cached(path_str: str) -> Suite:
    root = Path(path_str)
    if not root.is_dir():
        raise ValueError(f"suite data directory not found: {root}")
    levels = _load_levels(root / "levels.toml")
    schemas = {level: _read_json(root / "schemas" / f"{level}.json") for level in LEVELS}
    items = _load_items(root / "items.jsonl", root / "references.jsonl")
    prompts = _load_prompts(root / "prompts.toml")
    presets, descriptions = _load_presets(root / "presets.toml", items)
    return Suite(
        items=items,
        levels=levels,
        schemas=schemas,
        presets=presets,
        prompts=prompts,
        preset_descriptions=descriptions,
    )


def _read_toml(path: Path) -> dict:
    with path.open("rb") as fh:
        return tomllib.load(fh)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path.name}:{lineno}: invalid JSON: {exc}") from None
    return rows


def _load_levels(path: Path) -> dict[str, LevelSpec]:
    raw = _read_toml(path)
    missing = [level for level in LEVELS if level not in raw]
    if missing:
        raise ValueError(f"{path.name}: missing levels {missing}")
    return {level: LevelSpec(name=level, **raw[level]) for level in LEVELS}


def _load_items(items_path: Path, refs_path: Path) -> dict[str, Item]:
    refs = {}
    for row in _read_jsonl(refs_path):
        refs[row["item_id"]] = {level: row[level] for level in LEVELS}
    items: dict[str, Item] = {}
    for row in _read_jsonl(items_path):
        item_id = row["id"]
        if item_id in items:
            raise ValueError(f"{items_path.name}: duplicate item id {item_id!r}")
        if item_id not in refs:
            raise ValueError(f"{refs_path.name}: no references for item {item_id!r}")
        items[item_id] = Item(
            id=item_id,
            name=row["name"],
            category=row["category"],
            domain=row["domain"],
            facts=dict(row["facts"]),
            references=refs[item_id],
        )
    orphans = sorted(set(refs) - set(items))
    if orphans:
        raise ValueError(f"{refs_path.name}: references for unknown items {orphans}")
    return items


def _load_prompts(path: Path) -> _Prompts:
    raw = _read_toml(path)
    templates = {variant: raw["variants"][variant]["user"] for variant in VARIANTS}
    return _Prompts(system=raw["system"].strip(), fact_line=raw["fact_line"], templates=templates)


def _load_presets(path: Path, items: dict[str, Item]) -> tuple[dict, dict]:
    """Each preset is a list of groups; a group is the cross product items x variants."""
    raw = _read_toml(path)
    presets: dict[str, list[tuple[str, str]]] = {}
    descriptions: dict[str, str] = {}
    for name, body in raw.items():
        pairs: list[tuple[str, str]] = []
        for group in body["groups"]:
            item_ids = list(items) if group["items"] == [_ALL] else group["items"]
            variants = list(VARIANTS) if group["variants"] == [_ALL] else group["variants"]
            for item_id in item_ids:
                if item_id not in items:
                    raise ValueError(f"{path.name}: preset {name!r} names unknown item {item_id!r}")
                for variant in variants:
                    variant_parts(variant)  # raises on a typo
                    pairs.append((item_id, variant))
        if len(set(pairs)) != len(pairs):
            raise ValueError(f"{path.name}: preset {name!r} repeats a request")
        presets[name] = pairs
        descriptions[name] = body.get("description", "")
    return presets, descriptions


# --------------------------------------------------------------------------- prompts


def _humanise_key(key: str) -> str:
    return key.replace("_", " ")


def _format_value(value: Any) -> str:
    # Numbers print as in the sheet (1.7 stays 1.7, 1200 stays 1200) so the model's digits
    # can be matched against the facts.
    return str(value)


def render_facts(facts: dict, line: str = "- {key}: {value}") -> str:
    """Facts as one ``- key: value`` line each, underscores in keys shown as spaces."""
    return "\n".join(line.format(key=_humanise_key(k), value=_format_value(v)) for k, v in facts.items())


def _schema_for_prompt(schema: dict) -> str:
    shown = {k: v for k, v in schema.items() if k not in _SCHEMA_META_KEYS}
    return json.dumps(shown, indent=2)


def _render_user(prompts: _Prompts, variant: str, item: Item, spec: LevelSpec, schema: dict | None) -> str:
    fields = {
        "name": item.name,
        "category": item.category,
        "facts": render_facts(item.facts, prompts.fact_line),
        "schema": _schema_for_prompt(schema) if schema is not None else "",
        # The level's bands are available to templates so prompts can't drift from levels.toml.
        "min_words": spec.min_words,
        "max_words": spec.max_words,
        "min_sentences": spec.min_sentences,
        "max_sentences": spec.max_sentences,
        "min_paragraphs": spec.min_paragraphs,
        "max_paragraphs": spec.max_paragraphs,
        "use": spec.use,
    }
    return prompts.templates[variant].format_map(fields).strip()


# --------------------------------------------------------------------------- text measures

# A word is a whitespace-separated token with at least one letter or digit, so stray
# punctuation ("—", "-", "*") and markdown bullets don't count.
# A word: a whitespace-separated token holding a letter or digit. Tested token by token rather than
# with one \S*[^\W_]\S* pattern, which backtracks quadratically on long runs without one.
_WORD_CHAR = re.compile(r"[^\W_]")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
# Candidate sentence end: terminal punctuation, optional closing quotes/brackets/markdown,
# then whitespace. A decimal point ("1.7") is never followed by whitespace, so it is
# never a candidate.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]*_]*(?=\s)")
# Abbreviations that don't end a sentence whatever follows.
_ABBREVIATIONS = frozenset(
    "e.g i.e eg ie vs cf approx dr mr mrs ms prof st mt jr sr fig nos vol ca".split()
)
# Abbreviations that often do end a sentence: a boundary only when a capital follows.
_SOFT_ABBREVIATIONS = frozenset("etc inc ltd co corp no a.m p.m".split())
_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")


def count_words(text: str) -> int:
    return sum(1 for token in (text or "").split() if _WORD_CHAR.search(token))


def count_paragraphs(text: str) -> int:
    """Blocks of text separated by blank lines."""
    return len(_paragraphs(text))


def count_sentences(text: str) -> int:
    """Sentences, not fooled by decimals ("1.7") or abbreviations ("e.g.")."""
    return len(split_sentences(text))


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``, stripped, in order.

    A blank line or a line break also ends a sentence: a title or list line is its own unit.
    A trailing fragment without terminal punctuation is still a sentence.
    """
    sentences: list[str] = []
    for paragraph in _paragraphs(text):
        for line in paragraph.splitlines():
            sentences += _line_sentences(line)
    return sentences


def _paragraphs(text: str) -> list[str]:
    return [p for p in _PARAGRAPH_BREAK.split(text or "") if count_words(p)]


def _line_sentences(line: str) -> list[str]:
    pieces = []
    start = 0
    for match in _SENTENCE_END.finditer(line):
        if not _is_boundary(line, match):
            continue
        pieces.append(line[start : match.end()].strip())
        start = match.end()
    pieces.append(line[start:].strip())
    return [piece for piece in pieces if count_words(piece)]


def _token_before(line: str, end: int) -> str:
    """The last whitespace-separated token of line[:end], found by walking back (no copy of the
    line per candidate boundary, which made megabyte outputs quadratic)."""
    i = end
    while i > 0 and line[i - 1].isspace():
        i -= 1
    j = i
    while j > 0 and not line[j - 1].isspace():
        j -= 1
    return line[j:i]


def _is_boundary(line: str, match: re.Match) -> bool:
    following = line[match.end() :].lstrip()
    next_char = following[:1]
    if next_char.islower():
        return False  # "approx. five", "vs. the": sentences start with a capital
    if not line[match.start()] == ".":
        return True  # "!" or "?"
    token = _token_before(line, match.start())
    word = token.lstrip("(\"'“‘*_").lower()
    if word in _ABBREVIATIONS:
        return False
    if word in _SOFT_ABBREVIATIONS:
        return next_char.isupper() or not next_char
    # A single capital letter is an initial ("J. Smith"), not a sentence.
    if len(word) == 1 and word.isalpha() and token[-1:].isupper():
        return False
    return True


def extract_numbers(text: str) -> list[float]:
    """Every number written in digits, "1,200" read as 1200; dates give their parts."""
    return [float(m.replace(",", "")) for m in _NUMBER.findall(text or "")]
