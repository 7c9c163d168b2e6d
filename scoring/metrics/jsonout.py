"""JSON reliability: strict and lenient parsing, schema compliance, completeness, extraneous text.

Definitions (the task asks for one JSON object, so a parse succeeds only when it yields an object):

- strict parse: the output with surrounding whitespace stripped is exactly one JSON object under
  `json.loads` (strict: raw control characters such as a newline inside a string are rejected;
  llama.cpp's JSON-schema grammar can let those through, and a strict consumer would choke).
- lenient parse: the strict parse, else the first "{" in the output from which
  `json.JSONDecoder.raw_decode` reads an object — so JSON inside ``` fences or wrapped in prose
  counts. Control characters inside strings are tolerated here.
- extraneous: any non-whitespace outside that object (fences and commentary count); None when no
  object was found, since "outside" is then undefined.
- schema_ok: the lenient object validates against the level's schema (Draft 2020-12).
- field_completeness: share of the schema's required top-level fields present and non-empty.
- key_accuracy: |required ∩ present| / |required ∪ (present − optional)|, top-level keys: 1.0 for
  exactly the required keys; a missing or an unexpected key lowers it; declared optional
  properties neither help nor hurt.
Unparsable outputs get False / 0.0 for the last three (a failure, not a missing figure).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator

__all__ = ["JsonFound", "parse_strict", "parse_lenient", "schema_ok", "field_completeness", "key_accuracy", "json_metrics"]

# Scanning every "{" of a 1 MB garbage output would be quadratic; real answers put the object
# within the first few braces.
MAX_START_POSITIONS = 200
_LENIENT = json.JSONDecoder(strict=False)


@dataclass(frozen=True)
class JsonFound:
    value: dict
    start: int  # span of the object in the output
    end: int

    def extraneous(self, output: str) -> bool:
        return bool(output[: self.start].strip() or output[self.end :].strip())


def parse_strict(output: str) -> dict | None:
    """The object when the whole output (whitespace stripped) is one strict JSON object, else None."""
    try:
        value = json.loads((output or "").strip())
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; deep nesting recurses
        return None
    return value if isinstance(value, dict) else None


def parse_lenient(output: str) -> JsonFound | None:
    """The first JSON object anywhere in the output, with its span; None when there is none."""
    output = output or ""
    strict = parse_strict(output)
    if strict is not None:
        start = len(output) - len(output.lstrip())
        return JsonFound(strict, start, len(output.rstrip()))
    position = output.find("{")
    tries = 0
    while position != -1 and tries < MAX_START_POSITIONS:
        tries += 1
        try:
            value, end = _LENIENT.raw_decode(output, position)
        except (ValueError, RecursionError):
            value = None
        if isinstance(value, dict):
            return JsonFound(value, position, end)
        position = output.find("{", position + 1)
    return None


def schema_ok(value: Any, schema: dict) -> bool:
    if value is None:
        return False
    try:
        return Draft202012Validator(schema).is_valid(value)
    except RecursionError:
        return False


def _non_empty(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, (list, dict)):
        return bool(value)
    return True


def field_completeness(value: Any, schema: dict) -> float:
    required = list(schema.get("required", []))
    if not isinstance(value, dict):
        return 0.0
    if not required:
        return 1.0
    return sum(_non_empty(value.get(key)) for key in required) / len(required)


def key_accuracy(value: Any, schema: dict) -> float:
    if not isinstance(value, dict):
        return 0.0
    required = set(schema.get("required", []))
    optional = set(schema.get("properties", {})) - required
    present = set(value)
    union = required | (present - optional)
    if not union:
        return 1.0
    return len(required & present) / len(union)


def json_metrics(output: str, schema: dict) -> tuple[dict[str, Any], JsonFound | None]:
    """The six JSON figures for one output, and the object found (for scoring its prose)."""
    found = parse_lenient(output)
    value = found.value if found else None
    metrics = {
        "json_parse_strict": parse_strict(output) is not None,
        "json_parse_lenient": found is not None,
        "schema_ok": schema_ok(value, schema),
        "field_completeness": field_completeness(value, schema),
        "extraneous": found.extraneous(output or "") if found else None,
        "key_accuracy": key_accuracy(value, schema),
    }
    return metrics, found
