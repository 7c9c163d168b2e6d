"""Factual consistency by NLI, SummaC zero-shot style.

Each output sentence (the hypothesis) is classified against the item's fact sheet rendered as
sentences (the premise) by a sequence-classification NLI cross-encoder. Per output we report the
mean entailment probability over its sentences and the share of sentences whose most likely
label is contradiction. (SummaC-ZS proper also splits the premise and takes a max over its
chunks; the fact sheet is short enough — about 100 tokens — to be one premise.)

Class indices differ between checkpoints (cross-encoder/nli-* put contradiction at 0, others
entailment at 0), so labels are read by name from `config.id2label`, never by position.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

from scoring.metrics.errors import LabelMappingError, ModelLoadError

__all__ = ["DEFAULT_NLI_MODEL", "NliProbs", "NliScorer", "label_indices", "nli_figures"]

# A small public MNLI/SNLI DeBERTa-v3 cross-encoder (about 70 M parameters with its embeddings).
DEFAULT_NLI_MODEL = "cross-encoder/nli-deberta-v3-xsmall"
DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_LENGTH = 512  # tokens for premise + hypothesis; longer pairs are truncated

_ENTAILMENT = {"entailment", "entail", "entails", "entailed"}
_CONTRADICTION = {"contradiction", "contradict", "contradicts", "contradictory"}
_NEUTRAL = {"neutral"}
_OTHER = {"not_entailment", "non_entailment", "not entailment", "non-entailment"}
_UNNAMED = re.compile(r"^label_?\d+$")


class NliProbs(NamedTuple):
    entail: float
    contradict: float | None  # None for two-class (entailment / not_entailment) models

    @property
    def contradicted(self) -> bool | None:
        """Contradiction is the most likely of the three labels."""
        if self.contradict is None:
            return None
        neutral = max(0.0, 1.0 - self.entail - self.contradict)
        return self.contradict > self.entail and self.contradict > neutral


def label_indices(id2label: dict) -> tuple[int, int | None]:
    """(entailment index, contradiction index or None) from a config's id2label, matched by name."""
    original = {int(i): str(label).strip() for i, label in (id2label or {}).items()}
    names = {i: label.lower() for i, label in original.items()}
    unnamed = sorted(label for label in original.values() if _UNNAMED.match(label.lower()))
    if unnamed or not names:
        raise LabelMappingError(
            f"the NLI model's labels are unnamed ({', '.join(unnamed) or 'no id2label'}); "
            "use a checkpoint whose config.json id2label names entailment/neutral/contradiction"
        )
    entail = [i for i, n in names.items() if n in _ENTAILMENT]
    contra = [i for i, n in names.items() if n in _CONTRADICTION]
    unknown = [n for n in names.values() if n not in _ENTAILMENT | _CONTRADICTION | _NEUTRAL | _OTHER]
    if len(entail) != 1 or len(contra) > 1 or unknown:
        raise LabelMappingError(
            f"the NLI model's labels {sorted(original.values())} are not entailment/neutral/contradiction"
        )
    return entail[0], (contra[0] if contra else None)


class NliScorer:
    """An NLI cross-encoder loaded once; scores (premise, hypothesis) pairs in length-sorted batches."""

    def __init__(
        self,
        model_name_or_path: str | os.PathLike = DEFAULT_NLI_MODEL,
        device: str = "cpu",
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_length: int = DEFAULT_MAX_LENGTH,
        allow_download: bool = True,
    ):
        self.model_name = str(model_name_or_path)
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.tokenizer, self.model = _load(self.model_name, device, allow_download)
        self.entail_index, self.contradict_index = label_indices(self.model.config.id2label)

    def score(self, premise: str, hypotheses: Sequence[str]) -> list[NliProbs]:
        return self.score_pairs([(premise, h) for h in hypotheses])

    def score_pairs(
        self,
        pairs: Sequence[tuple[str, str]],
        progress: Callable[[int, int], None] | None = None,
    ) -> list[NliProbs]:
        """Probabilities for each (premise, hypothesis) pair, in input order; duplicates run once."""
        import torch

        unique = list(dict.fromkeys(pairs))
        if not unique:
            return []
        encoded = self.tokenizer(
            [p for p, _ in unique],
            [h for _, h in unique],
            truncation=True,
            max_length=self.max_length,
        )
        # Sorting by length keeps padding (wasted compute) small inside each batch.
        order = sorted(range(len(unique)), key=lambda i: len(encoded["input_ids"][i]))
        results: dict[tuple[str, str], NliProbs] = {}
        done = 0
        if progress:
            progress(0, len(unique))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                features = [{k: encoded[k][i] for k in encoded.keys()} for i in chunk]
                batch = self.tokenizer.pad(features, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                probs = torch.softmax(self.model(**batch).logits.float(), dim=-1).cpu()
                for row, i in zip(probs, chunk):
                    contradict = float(row[self.contradict_index]) if self.contradict_index is not None else None
                    results[unique[i]] = NliProbs(float(row[self.entail_index]), contradict)
                done += len(chunk)
                if progress:
                    progress(done, len(unique))
        return [results[pair] for pair in pairs]


def _load(name: str, device: str, allow_download: bool):
    try:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - transformers is a dependency
        raise ModelLoadError(f"NLI needs transformers and torch ({exc})") from exc
    local = Path(name).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise ModelLoadError(f"NLI model path {local} has no config.json; point at a saved checkpoint directory")
    source = str(local) if local.exists() else name
    try:
        with quiet_transformers():
            tokenizer = _from_pretrained(AutoTokenizer, source, allow_download)
            model = _from_pretrained(AutoModelForSequenceClassification, source, allow_download)
    except (OSError, ValueError, ImportError) as exc:
        hint = " (pip install sentencepiece for an spm-only DeBERTa tokenizer)" if "sentencepiece" in str(exc).lower() else ""
        raise ModelLoadError(
            f"NLI model {name!r} could not be loaded{hint}: {_first_line(exc)} — download it where there "
            "is network (huggingface-cli download cross-encoder/nli-deberta-v3-xsmall --local-dir DIR) "
            "and pass --nli-model DIR (or set BENCH_NLI_MODEL=DIR), or pass --no-nli; HF_HUB_OFFLINE=1 skips the "
            "download attempt"
        ) from exc
    model.eval().to(device)
    return tokenizer, model


@contextmanager
def quiet_transformers():
    """No "Loading weights" progress bars in the middle of bench's own progress display."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _from_pretrained(cls, source: str, allow_download: bool):
    """A cached copy first, so a machine without network doesn't wait on download retries."""
    try:
        return cls.from_pretrained(source, local_files_only=True)
    except OSError:
        if Path(source).exists() or not allow_download:
            raise
        _hub_reachable_or_raise()
        return cls.from_pretrained(source)


def _hub_reachable_or_raise() -> None:
    """Fail at once where the hub's host does not even resolve: huggingface_hub would otherwise
    retry with back-off for about 25 s per file before giving up (seen on offline machines)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        raise OSError(f"cannot reach the model hub ({host}: {exc.strerror or exc})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def nli_figures(probs: Iterable[NliProbs]) -> tuple[float | None, float | None]:
    """(factual_nli, contradiction_share) for one output's sentences; None, None without sentences."""
    probs = list(probs)
    if not probs:
        return None, None
    factual = sum(p.entail for p in probs) / len(probs)
    verdicts = [p.contradicted for p in probs]
    share = None if any(v is None for v in verdicts) else sum(verdicts) / len(verdicts)
    return factual, share
