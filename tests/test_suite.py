"""The task suite: its data stays inside the study's bands and its loader builds requests."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from jsonschema import Draft202012Validator

from scoring.tasks import (
    LEVELS,
    VARIANTS,
    Item,
    LevelSpec,
    TaskRequest,
    count_paragraphs,
    count_sentences,
    count_words,
    extract_numbers,
    split_sentences,
    json_text,
    load_suite,
    variant_parts,
)

ISO_DATE = re.compile(r"^\d{4}-\d{2}(-\d{2})?$")
JSON_INSTRUCTION = "Respond with only a JSON object matching this schema, no other text."


@pytest.fixture(scope="module")
def suite():
    return load_suite()


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fact_numbers(item: Item) -> set[float]:
    # Numbers written inside string facts count too: "70, 80, 90 and 100 °C", and the
    # year, month and day of an ISO date.
    numbers: set[float] = set()
    for value in item.facts.values():
        numbers.update(extract_numbers(str(value)))
    return numbers


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    "text, words, sentences, paragraphs",
    [
        ("", 0, 0, 0),
        ("The kettle holds 1.7 litres.", 5, 1, 1),
        ("It costs 89 USD, e.g. in shops. It was made by Dr. Voss in 2019!", 15, 2, 1),
        ("Prices vary, i.e. by region. Approx. five a day? Yes.", 10, 3, 1),
        ("One para. Still one.\n\nSecond para without a full stop", 10, 3, 2),
        ("Version 4.2 ships today. It writes 1,200 points — fast.", 9, 2, 1),
        ("Made by Acme Inc. in 2020. Sold by Bolt Ltd. Then more.", 12, 3, 1),
        ("A title line\nThe body sentence follows.", 7, 2, 1),
        ("\n\n  \n\nOnly this.\n\n\n", 2, 1, 1),
    ],
)
def test_text_measures(text, words, sentences, paragraphs):
    assert count_words(text) == words
    assert count_sentences(text) == sentences
    assert count_paragraphs(text) == paragraphs


def test_split_sentences_matches_the_count():
    text = "Kestrel Crag\nIt rises to 812 m, approx. the highest point. Walk it, e.g. in May!\n\nThe end"
    assert split_sentences(text) == [
        "Kestrel Crag",
        "It rises to 812 m, approx. the highest point.",
        "Walk it, e.g. in May!",
        "The end",
    ]
    assert count_sentences(text) == 4


def test_extract_numbers_normalises():
    assert extract_numbers("1,200 riders, 1.7 litres, 2019-03-14, 2:07:41") == [
        1200, 1.7, 2019, 3, 14, 2, 7, 41
    ]
    assert extract_numbers("no digits here") == []


def test_variant_parts():
    assert variant_parts("mid_json") == ("mid", "json")
    assert [variant_parts(v) for v in VARIANTS] == [(lv, f) for lv in LEVELS for f in ("text", "json")]
    with pytest.raises(ValueError, match="unknown variant"):
        variant_parts("huge_text")


# --------------------------------------------------------------------------- items


def test_items_and_domains(suite):
    assert len(suite.items) >= 24
    domains = Counter(item.domain for item in suite.items.values())
    assert len(domains) >= 6
    assert max(domains.values()) <= len(suite.items) // 3, "items should spread across domains"


def test_item_ids_are_slugs(suite):
    for item_id, item in suite.items.items():
        assert item.id == item_id
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)+", item_id), item_id
        assert item.name and item.category and item.domain


def test_facts_shape(suite):
    for item in suite.items.values():
        assert 5 <= len(item.facts) <= 12, item.id
        for key, value in item.facts.items():
            assert re.fullmatch(r"[a-z][a-z_]*", key), f"{item.id}: fact key {key!r}"
            assert isinstance(value, str) or _is_number(value), f"{item.id}.{key}"
        assert any(_is_number(v) for v in item.facts.values()), f"{item.id}: no numeric fact"
        assert any(isinstance(v, str) and ISO_DATE.match(v) for v in item.facts.values()), (
            f"{item.id}: no ISO date fact"
        )


# --------------------------------------------------------------------------- references


def _band_violations(text: str, spec: LevelSpec) -> list[str]:
    words, sentences, paragraphs = count_words(text), count_sentences(text), count_paragraphs(text)
    problems = []
    if not spec.min_words <= words <= spec.max_words:
        problems.append(f"{words} words")
    if not spec.min_sentences <= sentences <= spec.max_sentences:
        problems.append(f"{sentences} sentences")
    if not spec.min_paragraphs <= paragraphs <= spec.max_paragraphs:
        problems.append(f"{paragraphs} paragraphs")
    return problems


def test_levels_match_the_study(suite):
    brief, mid, strong = (suite.levels[level] for level in LEVELS)
    assert (brief.max_words, brief.min_sentences, brief.max_sentences) == (50, 1, 2)
    assert (mid.min_words, mid.max_words, mid.min_sentences, mid.max_sentences) == (75, 150, 3, 5)
    assert (strong.min_words, strong.max_words, strong.min_paragraphs, strong.max_paragraphs) == (200, 400, 2, 4)
    assert (brief.max_tokens, mid.max_tokens, strong.max_tokens) == (160, 400, 900)
    assert all(suite.levels[level].use for level in LEVELS)


def test_every_reference_inside_its_band(suite):
    failures = []
    for item in suite.items.values():
        assert set(item.references) == set(LEVELS), item.id
        for level in LEVELS:
            problems = _band_violations(item.references[level], suite.levels[level])
            if problems:
                failures.append(f"{item.id}/{level}: {', '.join(problems)}")
    assert not failures, "\n".join(failures)


def test_strong_references_use_blank_line_paragraphs(suite):
    for item in suite.items.values():
        text = item.references["strong"]
        assert "\n\n" in text and "\n\n\n" not in text, item.id
        assert text == text.strip(), item.id


def test_reference_numbers_come_from_the_facts(suite):
    failures = []
    for item in suite.items.values():
        allowed = _fact_numbers(item)
        for level in LEVELS:
            stray = [n for n in extract_numbers(item.references[level]) if n not in allowed]
            if stray:
                failures.append(f"{item.id}/{level}: {stray}")
    assert not failures, "\n".join(failures)


def test_longer_references_mention_the_numeric_facts(suite):
    # "Most of the facts" in mid and strong: every numeric fact over 20 (small ones may be
    # spelled out, "two-year warranty") appears in digits.
    for item in suite.items.values():
        numbers = [float(v) for v in item.facts.values() if _is_number(v) and v > 20]
        for level in ("mid", "strong"):
            written = set(extract_numbers(item.references[level]))
            missing = [n for n in numbers if n not in written]
            assert len(missing) <= len(numbers) // 4, f"{item.id}/{level} misses {missing}"


# --------------------------------------------------------------------------- presets


def test_quick_preset(suite):
    requests = suite.requests("quick")
    assert len(requests) == 6
    assert sorted(r.variant for r in requests) == sorted(VARIANTS)


def test_study_preset(suite):
    requests = suite.requests("study")
    formats = Counter(r.format for r in requests)
    assert formats == {"text": 23, "json": 23}
    levels = Counter(r.level for r in requests if r.format == "text")
    assert levels == {"brief": 8, "mid": 8, "strong": 7}
    domains = {suite.item(r.item_id).domain for r in requests}
    assert domains == {item.domain for item in suite.items.values()}


def test_full_preset(suite):
    requests = suite.requests("full")
    assert len(requests) == len(suite.items) * len(VARIANTS)
    assert {(r.item_id, r.variant) for r in requests} == {
        (item_id, v) for item_id in suite.items for v in VARIANTS
    }


@pytest.mark.parametrize("preset", ["quick", "study", "full"])
def test_request_ids_unique(suite, preset):
    ids = [r.request_id for r in suite.requests(preset)]
    assert len(ids) == len(set(ids))
    assert all(r.request_id == f"{r.item_id}/{r.variant}" for r in suite.requests(preset))


def test_unknown_names_raise_value_error(suite):
    with pytest.raises(ValueError, match="quick"):
        suite.requests("nope")
    with pytest.raises(ValueError, match="unknown item"):
        suite.item("no-such-item")
    with pytest.raises(ValueError, match="unknown item"):
        suite.request("no-such-item", "brief_text")
    with pytest.raises(ValueError, match="unknown variant"):
        suite.request(next(iter(suite.items)), "brief_yaml")


# --------------------------------------------------------------------------- requests


def test_requests_shape(suite):
    for request in suite.requests("full"):
        assert isinstance(request, TaskRequest)
        level, fmt = variant_parts(request.variant)
        assert (request.level, request.format) == (level, fmt)
        assert request.max_tokens == suite.levels[level].max_tokens
        system, user = request.messages
        assert system == {"role": "system", "content": system["content"]} and system["content"]
        assert user["role"] == "user"
        prose = user["content"].split(JSON_INSTRUCTION, 1)[0]
        assert "{" not in prose and "}" not in prose, f"{request.request_id}: unrendered placeholder"
        if fmt == "json":
            assert request.schema == suite.schemas[level]
            assert JSON_INSTRUCTION in user["content"]
            shown = user["content"].split(JSON_INSTRUCTION, 1)[1]
            assert json.loads(shown) == {k: v for k, v in request.schema.items() if k != "$schema"}
        else:
            assert request.schema is None
            assert "JSON" not in user["content"]


def test_every_prompt_renders_all_facts(suite):
    for request in suite.requests("full"):
        item = suite.item(request.item_id)
        content = request.messages[1]["content"]
        assert item.name in content and item.category in content
        for key, value in item.facts.items():
            assert f"- {key.replace('_', ' ')}: {value}" in content, f"{request.request_id}: {key}"


def test_source_text(suite):
    for item in suite.items.values():
        text = suite.source_text(item.id)
        assert item.name in text and item.category in text
        for value in item.facts.values():
            assert str(value) in text
        assert "\n" not in text


def test_load_suite_is_cached(suite):
    assert load_suite() is suite


# --------------------------------------------------------------------------- schemas


def _instance(level: str, item: Item) -> dict:
    """The smallest valid JSON answer for ``level`` built around the reference."""
    text = item.references[level]
    if level == "brief":
        return {"name": item.name, "description": text}
    highlights = [f"{k.replace('_', ' ')}: {v}" for k, v in list(item.facts.items())[:3]]
    if level == "mid":
        return {"name": item.name, "category": item.category, "description": text, "highlights": highlights}
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    return {
        "name": item.name,
        "category": item.category,
        "summary": paragraphs[0].split(". ")[0] + ".",
        "paragraphs": paragraphs,
        "highlights": highlights,
        "key_facts": dict(item.facts),
    }


def test_schemas_are_valid_draft_2020_12(suite):
    assert set(suite.schemas) == set(LEVELS)
    for schema in suite.schemas.values():
        Draft202012Validator.check_schema(schema)
        assert schema["additionalProperties"] is False
        assert set(schema["required"]) == set(schema["properties"])


def test_schemas_accept_the_references(suite):
    for item in suite.items.values():
        for level in LEVELS:
            instance = _instance(level, item)
            Draft202012Validator(suite.schemas[level]).validate(instance)
            # The prose pulled back out of the JSON is the reference, so JSON answers
            # are length-checked exactly like text ones.
            assert json_text(level, instance) == item.references[level]


def test_schemas_reject_extra_and_missing_keys(suite):
    item = next(iter(suite.items.values()))
    for level in LEVELS:
        validator = Draft202012Validator(suite.schemas[level])
        good = _instance(level, item)
        assert not validator.is_valid({**good, "note": "extra"})
        assert not validator.is_valid({k: v for k, v in good.items() if k != "name"})


def test_json_text_handles_bad_shapes():
    assert json_text("brief", ["not", "an", "object"]) is None
    assert json_text("mid", {"description": 3}) is None
    assert json_text("strong", {"paragraphs": "one string"}) is None
    assert json_text("strong", {"paragraphs": [" a ", "b"]}) == "a\n\nb"


def test_word_count_of_a_long_run_without_letters():
    # A 60,000-character run with no letter or digit once took minutes (a backtracking pattern).
    assert count_words("[" * 60000) == 0
    assert count_words("[" * 60000 + " word") == 1
