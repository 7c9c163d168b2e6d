import json

import pytest

from scoring.metrics.jsonout import (
    MAX_START_POSITIONS,
    field_completeness,
    json_metrics,
    key_accuracy,
    parse_lenient,
    parse_strict,
)
from scoring.tasks import load_suite

BRIEF = load_suite().schemas["brief"]  # required: name, description; no other keys allowed
MID = load_suite().schemas["mid"]
GOOD = {"name": "Aurora Kettle", "description": "A 1.7-litre electric kettle."}
GOOD_TEXT = json.dumps(GOOD)


def figures(output, schema=BRIEF):
    return json_metrics(output, schema)[0]


def test_valid_object():
    assert figures("  " + GOOD_TEXT + "\n") == {
        "json_parse_strict": True,
        "json_parse_lenient": True,
        "schema_ok": True,
        "field_completeness": 1.0,
        "extraneous": False,
        "key_accuracy": 1.0,
    }


def test_fenced_object_parses_leniently_and_counts_as_extraneous():
    assert figures(f"```json\n{GOOD_TEXT}\n```") == {
        "json_parse_strict": False,
        "json_parse_lenient": True,
        "schema_ok": True,
        "field_completeness": 1.0,
        "extraneous": True,
        "key_accuracy": 1.0,
    }


def test_prose_wrapped_object():
    output = f"Sure! Here is the JSON: {GOOD_TEXT} Hope this helps {{not json}}."
    found = parse_lenient(output)
    assert found.value == GOOD
    assert output[found.start : found.end] == GOOD_TEXT
    assert figures(output)["extraneous"] is True
    assert figures(output)["json_parse_strict"] is False


def test_truncated_output_fails_everything():
    assert figures(GOOD_TEXT[:-5]) == {
        "json_parse_strict": False,
        "json_parse_lenient": False,
        "schema_ok": False,
        "field_completeness": 0.0,
        "extraneous": None,
        "key_accuracy": 0.0,
    }


def test_wrong_type_fails_schema_but_keys_are_right():
    output = json.dumps({"name": "Aurora Kettle", "description": ["a", "list"]})
    result = figures(output)
    assert result["json_parse_strict"] and not result["schema_ok"]
    assert result["field_completeness"] == 1.0  # present and non-empty, if of the wrong type
    assert result["key_accuracy"] == 1.0


def test_extra_key():
    output = json.dumps({**GOOD, "price": 89})
    result = figures(output)
    assert result["json_parse_strict"] and not result["schema_ok"]  # additionalProperties: false
    assert result["key_accuracy"] == pytest.approx(2 / 3)  # |{name, description}| / |{name, description, price}|
    assert result["field_completeness"] == 1.0


def test_missing_and_empty_fields():
    output = json.dumps({"name": "Aurora Kettle", "description": "  "})
    assert figures(output)["field_completeness"] == 0.5
    assert figures(output)["schema_ok"] is True  # minLength 1 is met by spaces
    only_name = json.dumps({"name": "Aurora Kettle"})
    assert figures(only_name)["key_accuracy"] == 0.5
    assert figures(only_name)["field_completeness"] == 0.5
    mid = json.dumps({"name": "x", "category": "y", "description": "z", "highlights": []})
    assert field_completeness(json.loads(mid), MID) == 0.75


def test_optional_keys_neither_help_nor_hurt():
    schema = {"type": "object", "properties": {"a": {}, "b": {}, "c": {}}, "required": ["a", "b"]}
    assert key_accuracy({"a": 1, "b": 2}, schema) == 1.0
    assert key_accuracy({"a": 1, "b": 2, "c": 3}, schema) == 1.0
    assert key_accuracy({"a": 1, "c": 3}, schema) == 0.5
    assert key_accuracy({"a": 1, "b": 2, "z": 0}, schema) == pytest.approx(2 / 3)
    assert key_accuracy(None, schema) == 0.0


def test_strict_rejects_raw_control_characters_lenient_accepts():
    output = '{"name": "Aurora", "description": "line one\nline two"}'  # a raw newline inside a string
    assert parse_strict(output) is None
    assert parse_lenient(output).value["description"] == "line one\nline two"
    result = figures(output)
    assert result["json_parse_strict"] is False and result["json_parse_lenient"] is True
    assert result["extraneous"] is False


def test_non_objects_are_not_a_parse():
    assert parse_strict('"just a string"') is None
    assert parse_strict("[1, 2]") is None
    assert parse_lenient("[1, 2]") is None
    assert figures("42")["json_parse_strict"] is False


def test_garbage_huge_and_deep_inputs_do_not_crash():
    deep = "[" * 100_000 + "]" * 100_000
    assert parse_strict(deep) is None
    deep_object = '{"a":' * 50_000 + "1" + "}" * 50_000
    assert figures(deep_object)["json_parse_lenient"] is False
    assert figures("\x00\xff\ufffd{{{ not json")["json_parse_lenient"] is False
    huge = "x" * 1_000_000 + GOOD_TEXT
    assert figures(huge)["json_parse_lenient"] is True
    many_braces = "{" * (MAX_START_POSITIONS + 10) + GOOD_TEXT
    assert parse_lenient(many_braces) is None  # past the scan limit: documented
    assert figures("")["json_parse_strict"] is False
